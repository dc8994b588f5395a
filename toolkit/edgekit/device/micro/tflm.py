"""TensorFlow Lite for Microcontrollers as one more runtime behind ``LoadedModel``.

The ``tflite-micro`` package (``pip install 'edgekit[micro]'``) ships TFLM's host build: the same
C++ interpreter and reference kernels a microcontroller runs, compiled for the PC, driven through
``tflite_micro.python.tflite_micro.runtime.Interpreter``. It takes one image per invoke and only
full-integer models here. Its speed on a PC says nothing about a microcontroller's.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import quiet, runtime
from edgekit.device.micro import flatbuffer

RUNTIME_NAME = "tflite-micro"
INSTALL_HINT = "pip install 'edgekit[micro]'"
EXTENSION_MODULE = "tflite_micro.python.tflite_micro._runtime"
# The kernels TFLM's Python op resolver registers (tensorflow/lite/micro/python/interpreter/src/
# python_ops_resolver.cc) are the ``tflite::micro::Register_<OP>()`` functions linked into the
# extension; the package has no Python getter for the list, so it is read from the binary's symbols.
REGISTER_SYMBOL = re.compile(rb"_ZN6tflite5micro\d+Register_([A-Z0-9_]+)Ev")
PARALLEL_SHARE = 1000  # images a worker process should get at least, to pay for its start
# One worker of predict_parallel: argv = model path, scratch folder, share index; int8 in and out.
WORKER = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model, scratch, index = sys.argv[1:4]
images = np.load(f"{scratch}/in{index}.npy")
interpreter = runtime.Interpreter.from_file(model)
outputs = []
for start in range(len(images)):
    interpreter.set_input(images[start:start + 1], 0)
    interpreter.invoke()
    outputs.append(np.array(interpreter.get_output(0)))
np.save(f"{scratch}/out{index}.npy", np.concatenate(outputs))
"""


def available() -> bool:
    return importlib.util.find_spec("tflite_micro") is not None


def import_runtime() -> ModuleType:
    """TFLM's Python runtime module, or one ``ModelError`` naming the extra to install."""
    if not available():
        raise errors.ModelError(f"tflite-micro is not installed; add TensorFlow Lite Micro with "
                                f"`{INSTALL_HINT}`.")
    from tflite_micro.python.tflite_micro import runtime as tflm_runtime

    return tflm_runtime


def version() -> str:
    import_runtime()
    import tflite_micro

    return str(getattr(tflite_micro, "__version__", "unknown"))


@functools.lru_cache(maxsize=1)
def supported_ops() -> frozenset[str]:
    """Builtin ops TFLM's Python op resolver has a kernel for (from the extension's symbols)."""
    import_runtime()
    spec = importlib.util.find_spec(EXTENSION_MODULE)
    if spec is None or spec.origin is None:
        raise errors.ModelError(f"tflite-micro's extension {EXTENSION_MODULE} is missing; reinstall "
                                f"it with `{INSTALL_HINT}`.")
    return frozenset(name.decode() for name in REGISTER_SYMBOL.findall(Path(spec.origin).read_bytes()))


def unsupported(ops: tuple[str, ...]) -> list[str]:
    known = supported_ops()
    return [op for op in ops if op not in known]


def check_ops(path: Path, summary: flatbuffer.ModelSummary) -> None:
    missing = unsupported(summary.ops)
    if missing:
        raise errors.ModelError(
            f"{Path(path).name} uses {', '.join(missing)}, which TensorFlow Lite Micro's op "
            "resolver lacks: it cannot run on a microcontroller as it is. Re-export without that "
            "layer, or register a custom kernel in the firmware.")


def tensor_info(tensor: flatbuffer.Tensor) -> runtime.TensorInfo:
    return runtime.TensorInfo(tensor.name, tensor.dtype, [None, *tensor.shape[1:]],
                              tensor.scale, tensor.zero_point)


def create_interpreter(path: Path, data: bytes, arena_bytes: int | None) -> Any:
    """A TFLM interpreter over ``data``; its C++ complaints become the error's text."""
    tflm_runtime = import_runtime()
    try:
        with quiet.native_stderr(force=True) as log:
            interpreter = tflm_runtime.Interpreter.from_bytes(data, arena_size=arena_bytes)
    except (RuntimeError, ValueError) as error:
        raise errors.ModelError(describe_failure(Path(path), str(error), log.text,
                                                 arena_bytes)) from error
    return interpreter


def describe_failure(path: Path, message: str, log: str, arena_bytes: int | None) -> str:
    lines = [line.strip() for line in (log + "\n" + message).splitlines() if line.strip()]
    short = lines[0] if lines else "no reason given"
    resize = next((line for line in lines if "Failed to resize buffer" in line), None)
    if resize is not None or ("allocate" in message.lower() and arena_bytes is not None):
        arena = "TFLM's default arena" if arena_bytes is None else f"a {arena_bytes:,}-byte arena"
        detail = (resize or short).removeprefix("TFLM failed to allocate tensors").strip()
        return (f"TensorFlow Lite Micro cannot fit {path.name} into {arena} ({detail}). Give it "
                "at least the arena `edgekit micro` measures.")
    missing = next((line for line in lines if "Didn't find op" in line), None)
    if missing is not None:
        return f"TensorFlow Lite Micro cannot run {path.name}: {missing}."
    return f"TensorFlow Lite Micro cannot load {path.name}: {short[:200]}."


class MicroModel(runtime.LoadedModel):
    """``runtime.load(path, runtime="tflite-micro")``: TFLM's host interpreter, one image per invoke."""

    format = "tflite"
    runtime_name = RUNTIME_NAME

    def __init__(self, path: Path, threads: int | None, contract: InputContract | None,
                 arena_bytes: int | None = None) -> None:
        super().__init__(path, threads, contract)
        if path.suffix.lower() != ".tflite":
            raise errors.ModelError(f"{path.name}: TensorFlow Lite Micro runs int8 .tflite files; "
                                    "use model_int8.tflite.")
        data = path.read_bytes()
        summary = flatbuffer.summarise(path, data)
        flatbuffer.require_integer_model(path, summary)
        check_ops(path, summary)
        self.summary = summary
        self.interpreter = create_interpreter(path, data, arena_bytes)
        self.input = tensor_info(summary.input)
        self.output = tensor_info(summary.output)
        self._check_tensors()
        self._settle_contract(runtime._tflite_metadata(path))

    def predict_parallel(self, pixels: Any, workers: int | None = None) -> np.ndarray:
        """``predict`` over ``workers`` child processes (default: one per core) for a large set.

        Each child runs TFLM's interpreter on its share (a script that imports only TFLM and
        numpy, so nothing of the caller's program is re-run, unlike multiprocessing's spawn).
        """
        images = runtime.check_pixels(pixels, self.contract.shape)
        workers = min(max(1, workers or os.cpu_count() or 1), len(images) // PARALLEL_SHARE or 1)
        if workers == 1:
            return self.predict(images)
        shares = np.array_split(self._prepare(images), workers)
        with tempfile.TemporaryDirectory(prefix="edgekit-tflm-") as scratch:
            children = []
            try:
                for index, share in enumerate(shares):
                    np.save(Path(scratch) / f"in{index}.npy", share)
                    children.append(subprocess.Popen(
                        [sys.executable, "-c", WORKER, str(self.path), scratch, str(index)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                for child in children:
                    _, log = child.communicate()
                    if child.returncode != 0:
                        raise errors.ModelError(describe_failure(
                            self.path, f"a worker ended with exit code {child.returncode}", log, None))
                outputs = [np.load(Path(scratch) / f"out{index}.npy") for index in range(workers)]
            finally:
                for child in children:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
        return runtime.dequantize(np.concatenate(outputs), self.output)

    def _run(self, images: np.ndarray) -> np.ndarray:
        prepared = self._prepare(images)
        outputs = []
        for image in prepared:  # TFLM's interpreter has a batch of one
            self.interpreter.set_input(image[None], 0)
            self.interpreter.invoke()
            outputs.append(np.array(self.interpreter.get_output(0)))
        return runtime.dequantize(np.concatenate(outputs), self.output)
