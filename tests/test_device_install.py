"""The device install: `pip install edgekit` with no extras, no TensorFlow, labels test image 0."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import ARTIFACTS, ROOT, keep_only, run_cli
from test_bad_inputs import OTHER_CONTRACT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              str(ROOT)], capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.fail(f"base install failed: {install.stderr[-2000:]}")
    return venv


def test_base_install_has_no_tensorflow(device_env):
    probe = subprocess.run([str(device_env / "bin" / "python"), "-c", "import tensorflow"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    probe = subprocess.run([str(device_env / "bin" / "python"), "-c", "import keras"],
                           capture_output=True, text=True)
    assert probe.returncode != 0


@pytest.mark.parametrize("artifact", ARTIFACTS, ids=ARTIFACTS)
def test_predict_labels_the_ankle_boot(device_env, test_split, tmp_path, artifact):
    image = tmp_path / "test-image-0.png"
    Image.fromarray(test_split.images[0, :, :, 0]).save(image)
    result = subprocess.run(
        [str(device_env / "bin" / "edgekit"), "predict", str(image), "--model",
         str(ROOT / "exported" / artifact)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{image}: Ankle boot ("), result.stdout


def test_verify_golden_on_the_device(device_env, tmp_path):
    result = subprocess.run([str(device_env / "bin" / "edgekit"), "verify",
                             str(ROOT / "exported"), "--golden"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the micro extra the TFLM rows are skipped with one line, never an error.
    skipped = [line for line in result.stdout.splitlines() if "tflite-micro rows skipped" in line]
    assert len(skipped) == 1 and "edgekit[micro]" in skipped[0] and "Error:" not in result.stderr


def test_the_bad_input_corpus_on_the_device(device_env, exported_copy, tmp_path):
    """Issue 7's bar on a TensorFlow-free install: every broken input is one Error: line and
    exit 1, every odd image is labelled, nothing prints a traceback or hangs."""
    import json
    import shutil

    data = ROOT / "tests" / "data"
    edgekit = str(device_env / "bin" / "edgekit")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([edgekit, *args], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env=env)

    def assert_one_error_line(result: subprocess.CompletedProcess[str], what: str) -> None:
        assert result.returncode == 1, (what, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, what
        assert [line for line in result.stderr.splitlines() if line.startswith("Error:")], what

    model = str(exported_copy / "model_int8.tflite")
    for image in sorted((data / "bad" / "images").iterdir()):
        assert_one_error_line(run("predict", str(image), "--model", model), image.name)
    odd = sorted((data / "odd").iterdir())
    labelled = run("predict", "--json", "--model", model, *map(str, odd))
    assert labelled.returncode == 0, labelled.stderr
    assert len(json.loads(labelled.stdout)["results"]) == len(odd)
    models = tmp_path / "models"
    models.mkdir()
    for broken in sorted((data / "bad" / "models").iterdir()):
        if broken.name in OTHER_CONTRACT:  # valid models of another contract: they run
            continue
        shutil.copy(broken, models / broken.name)
        assert_one_error_line(run("predict", str(odd[0]), "--model", str(models / broken.name)),
                              broken.name)
    # A tampered export: a changed byte is caught by the manifest's sha256.
    tampered = exported_copy / "model_fp32.onnx"
    payload = bytearray(tampered.read_bytes())
    payload[-1] ^= 0xFF
    tampered.write_bytes(bytes(payload))
    assert_one_error_line(run("predict", str(odd[0]), "--model", str(tampered)), "sha256")
    assert_one_error_line(run("verify", str(exported_copy), "--golden"), "verify")


def test_predict_on_an_own_data_release_names_a_folder_class(device_env, digits_release, tmp_path):
    """A release trained on a folder of images (here: scikit-learn's digits, classes with
    spaces; the release tests/test_own_data.py checks) is labelled on the device install with
    the folder names, and verified there (all six files), TensorFlow-free."""
    import shutil

    data, release = digits_release
    run = tmp_path / "run"
    shutil.copytree(release, run)  # verify writes its metrics into the copy
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    image = data / "digit 7" / sorted(path.name for path in (data / "digit 7").iterdir())[0]
    result = subprocess.run([str(device_env / "bin" / "edgekit"), "predict", "--json", str(image),
                             "--model", str(run / "model_int8.tflite")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    import json

    label = json.loads(result.stdout)["results"][0]["predictions"][0]["label"]
    assert label in {f"digit {n}" for n in range(10)}, label
    verified = subprocess.run([str(device_env / "bin" / "edgekit"), "verify", str(run)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


def test_explain_on_the_device(device_env, test_split, exported_copy, tmp_path):
    """Issue 18's bar on a TensorFlow-free install: occlusion panels of the int8 file, with a
    one-line note that the Keras panels are left out; explanation parity from the stored maps."""
    import json

    image = tmp_path / "test-image-0.png"
    Image.fromarray(test_split.images[0, :, :, 0]).save(image)
    output = tmp_path / "explained"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    edgekit = str(device_env / "bin" / "edgekit")
    result = subprocess.run(
        [edgekit, "explain", str(ROOT / "exported"), "--model",
         str(ROOT / "exported" / "model_int8.tflite"), "--image", str(image), "--output-dir",
         str(output)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stdout.splitlines()
            if "TensorFlow is not installed" in line], result.stdout
    assert Image.open(output / "test-image-0.png").format == "PNG"
    report = json.loads((output / "explain.json").read_text())
    assert list(report["inputs"][0]["models"]) == ["model_int8.tflite"]
    assert report["inputs"][0]["explained_class"] == "Ankle boot"
    # Three of the six files, both runtimes and the fp32 file that scores the stored maps (all
    # six: tests/test_explain.py, with TensorFlow installed; the arithmetic is the same).
    keep_only(exported_copy, "model_fp32.tflite", "model_int8.tflite", "model_int8.onnx")
    parity = subprocess.run([edgekit, "explain", str(exported_copy), "--parity"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert parity.returncode == 0, parity.stdout + parity.stderr
    written = json.loads((exported_copy / "reports" / "explain.json").read_text())
    assert written["passed"] and sorted(row["file"] for row in written["artifacts"]) == [
        "model_fp32.tflite", "model_int8.onnx", "model_int8.tflite"]


@pytest.fixture(scope="module")
def serve_env(device_env) -> Path:
    """The device venv plus the serve extra (added after the no-extras tests have run)."""
    install = subprocess.run([str(device_env / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              f"{ROOT}[serve]"], capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.fail(f"serve install failed: {install.stderr[-2000:]}")
    return device_env


def test_serve_on_the_device_without_tensorflow(serve_env, test_split, tmp_path):
    """Issue 19's bar: with the serve extra and no TensorFlow, the server starts on the int8
    model and answers a test image with edgekit.runtime's label and probabilities."""
    import io
    import json
    import re
    import signal
    import time
    import urllib.request

    import numpy as np

    from edgekit.device import runtime

    for module in ("tensorflow", "keras"):
        probe = subprocess.run([str(serve_env / "bin" / "python"), "-c", f"import {module}"],
                               capture_output=True, text=True)
        assert probe.returncode != 0, f"the serve extra brought {module}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    model = ROOT / "exported" / "model_int8.tflite"
    server = subprocess.Popen([str(serve_env / "bin" / "edgekit"), "serve", "--model", str(model),
                               "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, line + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        url = match.group(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                if urllib.request.urlopen(url + "healthz", timeout=5).status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.1)
        stream = io.BytesIO()
        Image.fromarray(test_split.images[0, :, :, 0]).save(stream, format="PNG")
        request = urllib.request.Request(url + "v1/predict", data=stream.getvalue(), method="POST",
                                         headers={"Content-Type": "image/png"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    result = answer["results"][0]
    assert result["label"] == "Ankle boot"
    expected = runtime.load(model).predict(test_split.images[:1])[0]
    np.testing.assert_allclose(result["probabilities"], expected, rtol=0, atol=1e-6)
    assert server.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]


def test_a_keras_applications_release_predicts_on_the_device(device_env, tmp_path):
    """MobileNetV3Small (built here, weights=None, 32x32, three garment classes): the default
    suite's Keras Applications export. Every artifact answers `edgekit predict --json` on the
    TensorFlow-free install with the folder's class names, the fp32 TFLite file's top-1 is the
    Keras model's own, and `edgekit verify` runs there on the folder's test split."""
    pytest.importorskip("tensorflow")
    import json

    import keras
    import numpy as np

    from test_architectures import architectures

    family = architectures()
    data = family.garment_folder(tmp_path / "garments", 32, per_class=20)
    keras.utils.set_random_seed(0)
    model = family.build("mobilenet_v3_small", 32, len(family.FASHION_CLASSES))
    from edgekit.device import datasets

    train = datasets.open_dataset(data, size=(32, 32)).train  # a few steps: no near-ties
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(train.images.astype(np.float32), train.labels, batch_size=16, epochs=3, verbose=0)
    path = tmp_path / "mobilenet.keras"
    model.save(path)
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(path), "--data", str(data), "--output-dir",
                       str(release), "--calibration-size", "30", "--no-explanations")
    assert exported.returncode == 0, exported.stderr[-2000:]
    manifest = json.loads((release / "manifest.json").read_text())
    image = data / manifest["dataset"]["files"]["test"]["Sneaker"][0]
    pixels = np.asarray(Image.open(image).convert("RGB"), np.float32)[None]
    expected = manifest["labels"][int(np.argmax(model(pixels)))]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for artifact in ARTIFACTS:
        result = subprocess.run([str(device_env / "bin" / "edgekit"), "predict", "--json",
                                 str(image), "--model", str(release / artifact)],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert result.returncode == 0, (artifact, result.stderr)
        label = json.loads(result.stdout)["results"][0]["predictions"][0]["label"]
        assert label in family.FASHION_CLASSES, (artifact, label)
        if artifact == "model_fp32.tflite":
            assert label == expected
    verified = subprocess.run([str(device_env / "bin" / "edgekit"), "verify", str(release),
                               "--data", str(data)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert verified.returncode in (0, 1) and "Traceback" not in verified.stderr, verified.stderr
    assert "model_fp32.tflite" in verified.stdout  # it ran; parity of a barely trained model may fail
