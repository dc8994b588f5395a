"""Device-side inference without TensorFlow: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``.

One call serves every artifact::

    model = edgekit.device.runtime.load("exported/model_int8.tflite")
    probabilities = model.predict(pixels)   # uint8 [N, H, W, C] -> float32 [N, classes]

The input contract (size, channels, labels, how an image file is prepared) comes from the
manifest beside the file, else from the file's own edgekit metadata, else from its input
tensor: never from a constant. ``model.contract`` holds it.

Quantised inputs and outputs are converted with the tensors' own scale and zero point.
Imports only numpy, the standard library and the two runtimes (the latter lazily).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import contract as contract_module
from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.contract import InputContract
from edgekit.device import quiet

TFLITE_MAGIC = b"TFL3"
DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | None]
    scale: float | None = None
    zero_point: int | None = None

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": self.shape}
        quantized = {"quantization": {"scale": self.scale, "zero_point": self.zero_point}}
        return payload if self.scale is None else payload | quantized


def check_pixels(pixels: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """Validate raw pixels and return them as uint8 ``[N, *shape]``.

    Accepts uint8, or integer/float arrays whose values are finite and within 0..255.
    A single image (``[H, W]`` for grey, ``[H, W, C]``) and ``[N, H, W]`` for grey are given
    the missing axes. Anything else raises ``ValueError`` naming the problem.
    """
    if (type(pixels) is np.ndarray and pixels.dtype == np.uint8
            and pixels.shape[1:] == shape and len(pixels)):
        return pixels  # already what the models take: the single-image path stays short
    array = np.asarray(pixels)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"pixels must be uint8 (or numbers in 0..255), got dtype {array.dtype}")
    if array.ndim == 2 and shape[2] == 1:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None] if array.shape == shape else array[..., None]
    if array.ndim != 4 or array.shape[1:] != shape:
        raise ValueError(f"pixels must have shape [N, {', '.join(map(str, shape))}], "
                         f"got {list(np.shape(pixels))}")
    if array.shape[0] == 0:
        raise ValueError("pixels hold no images (N = 0)")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError("pixels contain NaN or infinity")
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ValueError(f"pixel values must lie in 0..255, got {low}..{high}")
    return np.rint(array).astype(np.uint8)


def quantize(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    dtype = np.dtype(info.dtype)
    if info.scale is None or not info.scale:
        raise errors.ModelError(f"input tensor {info.name} is {info.dtype} without quantization scale")
    if values.dtype == np.uint8 and info.scale == 1.0:
        # edgekit's own int8 contract (scale 1, zero point -128, or uint8 with 0) maps 0..255
        # exactly: a bit flip instead of float arithmetic on the latency path.
        if dtype == np.int8 and info.zero_point == -128:
            return (values ^ np.uint8(0x80)).view(np.int8)
        if dtype == np.uint8 and not info.zero_point:
            return values
    limits = np.iinfo(dtype)
    quantized = np.rint(values.astype(np.float32) / info.scale) + (info.zero_point or 0)
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.scale is None or not info.scale:
        return np.asarray(values, dtype=np.float32)
    # One float32 array, scaled in place: no float64 or extra temporaries on the latency path.
    result = np.subtract(values, np.float32(info.zero_point or 0), dtype=np.float32)
    result *= np.float32(info.scale)
    return result


class LoadedModel:
    """What ``load`` returns: one ``predict`` for every format."""

    format = ""

    def __init__(self, path: Path, threads: int | None, contract: InputContract | None) -> None:
        self.path = path
        self.threads = threads
        self._given_contract = contract  # from the manifest; else the file's metadata decides
        self.contract: InputContract
        self.input: TensorInfo
        self.output: TensorInfo

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def predict(self, pixels: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        images = check_pixels(pixels, self.contract.shape)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if len(images) <= batch_size:  # one batch, the single-image path: no list, no copy
            probabilities = self._run(images)
        else:
            probabilities = np.concatenate([self._run(images[start:start + batch_size])
                                            for start in range(0, len(images), batch_size)])
        # Dequantised integers are finite by construction (the scale is checked at load).
        if self.output.scale is None and not np.isfinite(probabilities).all():
            raise errors.ModelError(
                f"{self.path.name} produced NaN or infinite outputs: its weights are broken. "
                "Re-export it with `edgekit export`."
            )
        return probabilities

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 pixels -> what the input tensor takes."""
        if self.input.dtype in ("float32", "float16"):
            return images.astype(self.input.dtype)
        return quantize(images, self.input)

    def _check_tensors(self) -> None:
        for role, tensor in (("input", self.input), ("output", self.output)):
            if tensor.scale is not None and not (np.isfinite(tensor.scale) and tensor.scale > 0):
                raise errors.ModelError(
                    f"{self.path.name}: {role} tensor {tensor.name} has quantisation scale "
                    f"{tensor.scale}, which is not a positive number: the file is damaged. "
                    "Re-export it with `edgekit export`."
                )
            quantized = tensor.dtype in ("uint8", "int8") and bool(tensor.scale)
            if tensor.dtype not in ("float32", "float16") and not quantized:
                raise errors.ModelError(
                    f"{self.path.name}: {role} tensor {tensor.name} is {tensor.dtype}; edgekit runs "
                    "models with float32/float16 or quantised uint8/int8 tensors. Re-export it "
                    "with `edgekit export`."
                )

    def _settle_contract(self, metadata: dict[str, Any] | None) -> None:
        """The contract: the manifest's, else the file's embedded one, else the tensors' own."""
        shape, classes = self.input.shape, self.output.shape
        if len(shape) != 4 or any(d is None for d in shape[1:]) or shape[3] not in (1, 3):
            raise errors.ModelError(
                f"{self.path.name} takes input of shape {shape}, not [N, height, width, 1 or 3]: "
                "it is not an image classifier edgekit can run.")
        if len(classes) != 2 or classes[-1] is None or classes[-1] < 2:
            raise errors.ModelError(
                f"{self.path.name} outputs shape {classes}, not [N, classes]: it is not a "
                "classifier edgekit can run.")
        height, width, channels = (int(d) for d in shape[1:])  # type: ignore[arg-type]
        contract = self._given_contract
        source = "its manifest"
        if contract is None and metadata is not None and "input" in metadata:
            source = "its embedded metadata"
            try:
                contract = InputContract.from_dict(metadata["input"], metadata.get("labels", ()))
            except (KeyError, TypeError, ValueError):
                contract = None  # unreadable metadata: fall back to the tensors
        if contract is None:
            contract = InputContract(
                height=height, width=width, channels=channels,
                labels=contract_module.placeholder_labels(int(classes[-1])),
                preparation=contract_module.default_preparation(channels))
            source = "its input tensor"
        if contract.shape != (height, width, channels):
            raise errors.ModelError(
                f"{self.path.name} takes input of shape {shape}, not {contract.describe_shape()} "
                f"as {source} records: it is not a model for this input contract.")
        if contract.num_classes != classes[-1]:
            raise errors.ModelError(
                f"{self.path.name} outputs shape {classes}, but {source} names "
                f"{contract.num_classes} classes: it is not a {contract.num_classes}-class "
                "classifier.")
        self.contract = contract

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"inputs": [self.input.to_dict()], "outputs": [self.output.to_dict()]}


class OnnxRuntimeModel(LoadedModel):
    format = "onnx"

    def __init__(self, path: Path, threads: int | None, contract: InputContract | None) -> None:
        super().__init__(path, threads, contract)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            with quiet.native_stderr():
                self.session = onnxruntime.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise errors.ModelError(
                f"ONNX Runtime cannot load {path}: {_first_line(error)}. The file is corrupt or "
                "not an ONNX model; re-export it with `edgekit export`."
            ) from error
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        _check_tensor_counts(path, len(inputs), len(outputs))
        model_input, model_output = inputs[0], outputs[0]
        self.input = TensorInfo(model_input.name, _onnx_dtype(model_input.type),
                                [_dimension(d) for d in model_input.shape])
        self.output = TensorInfo(model_output.name, _onnx_dtype(model_output.type),
                                 [_dimension(d) for d in model_output.shape])
        self._check_tensors()
        self._settle_contract(_onnx_metadata(self.session))

    def _run(self, images: np.ndarray) -> np.ndarray:
        (result,) = self.session.run([self.output.name], {self.input.name: self._prepare(images)})
        return dequantize(np.asarray(result), self.output)


def _check_tensor_counts(path: Path, inputs: int, outputs: int) -> None:
    if inputs != 1 or outputs != 1:
        raise errors.ModelError(
            f"{path.name} has {inputs} input(s) and {outputs} output(s), not one image input "
            "and one probability output: it is not a model for this input contract."
        )


XNNPACK_MODES = ("default", "latest", "off")


class LiteRTModel(LoadedModel):
    format = "tflite"

    def __init__(self, path: Path, threads: int | None, contract: InputContract | None,
                 xnnpack: str = "default") -> None:
        super().__init__(path, threads, contract)
        from ai_edge_litert import interpreter as litert

        if xnnpack not in XNNPACK_MODES:
            raise ValueError(f"xnnpack must be one of {', '.join(XNNPACK_MODES)}")
        resolver = (litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if xnnpack == "off"
                    else litert.OpResolverType.AUTO)
        try:
            # LiteRT runs one thread unless told otherwise; use the machine like ONNX Runtime does.
            with quiet.native_stderr():  # its "INFO: Created ... XNNPACK delegate" line
                self.interpreter = litert.Interpreter(
                    model_path=str(path), num_threads=threads or os.cpu_count() or 1,
                    experimental_op_resolver_type=resolver,
                    experimental_default_delegate_latest_features=xnnpack == "latest")
                self.interpreter.allocate_tensors()
        except Exception as error:  # LiteRT raises ValueError/RuntimeError for bad files
            raise errors.ModelError(
                f"LiteRT cannot load {path}: {_first_line(error)}. The file is corrupt or not a "
                "TFLite model; re-export it with `edgekit export`."
            ) from error
        input_details = self.interpreter.get_input_details()
        output_details = self.interpreter.get_output_details()
        _check_tensor_counts(path, len(input_details), len(output_details))
        input_detail, output_detail = input_details[0], output_details[0]
        self._input_index = input_detail["index"]
        self._output_index = output_detail["index"]
        self.input = _litert_tensor(input_detail)
        self.output = _litert_tensor(output_detail)
        self._check_tensors()
        self._settle_contract(_tflite_metadata(path))
        self._batch = int(input_detail["shape"][0])

    def _run(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self._batch:
            self.interpreter.resize_tensor_input(self._input_index,
                                                 [len(images), *self.contract.shape])
            self.interpreter.allocate_tensors()
            self._batch = len(images)
        self.interpreter.set_tensor(self._input_index, self._prepare(images))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self._output_index), self.output)


RUNTIMES: dict[str, type[LoadedModel]] = {".onnx": OnnxRuntimeModel, ".tflite": LiteRTModel}
RUNTIME_CHOICES = ("default", "tflite-micro")  # the latter: TFLM's host build, edgekit[micro]


def load(path: str | os.PathLike[str], threads: int | None = None, verify_sha256: bool = True,
         xnnpack: str = "default", check_graph: Callable[[Path], None] | None = None,
         runtime: str = "default") -> LoadedModel:
    """Load an exported model; check its sha256 against the manifest beside it, if listed.

    ``runtime``: "default" (ONNX Runtime, LiteRT) or "tflite-micro" (for an int8 .tflite).
    ``threads``: intra-op threads (default: the runtime's choice, all cores).
    ``xnnpack`` (LiteRT only): "default", "latest" (all of XNNPACK's flag-protected
    features, e.g. more int8 kernels) or "off" (LiteRT's builtin kernels only).
    ``check_graph``: a further check of the file before it is loaded (the workstation passes
    ``onnx.checker``; the device side never imports onnx).
    """
    path = Path(path)
    if path.is_dir():
        raise errors.ModelError(f"{path} is a folder; pass a .onnx or .tflite file.")
    if not path.exists():
        raise errors.ModelError(f"model file {path} does not exist{fileio.relative_to_cwd(path)}. "
                                "Check the path, or create one with `edgekit export`.")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise errors.ModelError(f"{path} is not a regular file; pass a .onnx or .tflite file.")
    runtime_class = RUNTIMES.get(path.suffix.lower())
    if runtime_class is None:
        raise errors.ModelError(_unknown_format(path))
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}")
    _check_file_kind(path)
    contract = None
    entry = manifest_entry(path)
    if entry is not None:
        manifest, artifact = entry
        contract = manifest_module.contract_of(manifest, path.parent)
        if verify_sha256:
            actual = fileio.sha256_of(path)
            if actual != artifact["sha256"]:
                raise errors.ModelError(
                    f"{path} does not match its manifest (sha256 {actual[:12]}… vs "
                    f"{str(artifact['sha256'])[:12]}…): the file changed after export. Re-export it, "
                    "or pass --no-verify-sha256 if you changed it on purpose."
                )
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    if check_graph is not None:
        check_graph(path)
    if runtime == "tflite-micro":
        from edgekit.device.micro import tflm
        return tflm.MicroModel(path, threads, contract)
    if runtime_class is LiteRTModel:
        return LiteRTModel(path, threads, contract, xnnpack=xnnpack)
    return runtime_class(path, threads, contract)


def manifest_entry(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The manifest beside ``path`` and the artifact entry for it, if both exist."""
    folder = path.parent
    if not manifest_module.path_in(folder).is_file():
        return None
    manifest = manifest_module.load(folder)
    artifact = manifest_module.find_artifact(manifest, path.name)
    return None if artifact is None else (manifest, artifact)


def _unknown_format(path: Path) -> str:
    """Say what the file seems to be, from its first bytes, and how to run it."""
    message = f"{path.name}: unknown model format {path.suffix!r}; edgekit runs .onnx and .tflite files"
    if path.suffix.lower() in (".keras", ".h5"):
        return (message + ". Keras models are the training side: `edgekit export --model "
                f"{path}` makes the .tflite and .onnx files that predict runs.")
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError:
        return message + "."
    if head[4:8] == TFLITE_MAGIC:
        return message + "; this one is a TFLite flatbuffer: rename it to .tflite."
    return message + "."


def _check_file_kind(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise errors.ModelError(f"{path} is empty; re-export it with `edgekit export`.")
    with open(path, "rb") as stream:
        head = stream.read(8)
    is_tflite = head[4:8] == TFLITE_MAGIC
    if path.suffix.lower() == ".tflite" and not is_tflite:
        raise errors.ModelError(
            f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier): it is corrupt or another "
            "format (an ONNX file renamed?). Re-export it with `edgekit export`."
        )
    if path.suffix.lower() == ".onnx" and is_tflite:
        raise errors.ModelError(
            f"{path} is a TFLite flatbuffer named .onnx; rename it to .tflite."
        )


def _onnx_metadata(session: Any) -> dict[str, Any] | None:
    """The edgekit entries of an ONNX file's metadata_props (JSON values decoded)."""
    entries = session.get_modelmeta().custom_metadata_map
    try:
        return {key: json.loads(entries[key]) for key in ("labels", "input") if key in entries}
    except json.JSONDecodeError:
        return None


def _tflite_metadata(path: Path) -> dict[str, Any] | None:
    from edgekit.device import tflite_metadata

    try:
        return tflite_metadata.read(path.read_bytes())
    except Exception:  # metadata is optional; the interpreter already accepted the file
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _onnx_dtype(type_name: str) -> str:
    names = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
             "tensor(int8)": "int8", "tensor(double)": "float64"}
    if type_name in names:
        return names[type_name]
    return type_name.removeprefix("tensor(").removesuffix(")")


def _dimension(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _litert_tensor(detail: dict[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature", detail["shape"])
    shape = [int(d) if d > 0 else None for d in signature]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = bool(scale) and np.dtype(detail["dtype"]).kind in "iu"
    return TensorInfo(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=shape,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )
