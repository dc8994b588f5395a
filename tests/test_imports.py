"""The dependency boundary: the device path never imports TensorFlow (fresh interpreters)."""

import json
import subprocess
import sys

from conftest import EXPORTED

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn", "matplotlib", "tf_keras")
ALLOWED_THIRD_PARTY = {"numpy", "PIL", "click", "onnxruntime", "ai_edge_litert", "flatbuffers",
                       "edgekit", "ml_dtypes", "google", "tqdm", "backports", "typing_extensions",
                       "coloredlogs", "humanfriendly", "packaging", "sympy", "mpmath", "_distutils_hack"}

PROBE = """
import json, sys
{body}
loaded = sorted({{m.split('.')[0] for m in sys.modules}})
print(json.dumps(loaded))
"""


def loaded_modules(body: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_runtime_import_is_tensorflow_free():
    loaded = loaded_modules("import edgekit.device.runtime, edgekit.device.parity, edgekit.manifest, "
                            "edgekit.device.images, edgekit.device.verify, edgekit.device.datasets")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_verify_golden_is_tensorflow_free():
    # verify runs onnx.checker where onnx is installed (a workstation); never TensorFlow.
    body = f"""
from click.testing import CliRunner
from edgekit import cli
r = CliRunner().invoke(cli.main, ['verify', '{EXPORTED}', '--golden'])
assert r.exit_code == 0, r.output
"""
    loaded = loaded_modules(body)
    assert not loaded & (set(HEAVY) - {"onnx"}), loaded & set(HEAVY)


def test_predict_is_tensorflow_free():
    body = f"""
from click.testing import CliRunner
from edgekit import cli
import numpy as np
from PIL import Image
from edgekit.device import datasets
Image.fromarray(datasets.load_test().images[0, :, :, 0]).save('/tmp/edgekit-boot.png')
for model in ('model_int8.tflite', 'model_fp32.onnx', 'model_int8.onnx', 'model_fp16.tflite'):
    r = CliRunner().invoke(cli.main, ['predict', '/tmp/edgekit-boot.png', '--model',
                                      '{EXPORTED}/' + model])
    assert r.exit_code == 0 and 'Ankle boot' in r.output, r.output
"""
    loaded = loaded_modules(body)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    unexpected = {name for name in loaded - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY
                  if not name.startswith("_")}
    assert not unexpected, unexpected
