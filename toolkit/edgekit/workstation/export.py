"""``edgekit export``: Keras model -> TFLite (fp32, fp16, dynamic, int8) and ONNX (fp32, int8).

Workstation only (TensorFlow, tf2onnx, onnx, onnxruntime.quantization). Every file is
written atomically; the manifest is updated once all requested artifacts exist. Tensor
names, dtypes and quantisation parameters in the manifest are read back through the same
device runtimes that will run the files (``edgekit.device.runtime``), so they describe what a
device sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__, errors, fileio
from edgekit import manifest as manifest_module
from edgekit.contract import INPUT_CONTRACT, INPUT_SHAPE, LABELS
from edgekit.device import datasets, runtime, tflite_metadata
from edgekit.workstation import fashion_download, models, training
from edgekit.workstation.config import ExportConfig, ExportFormat, Quantization

REFERENCE_FILE = "model.keras"
REFERENCE_OUTPUTS_FILE = "reference.npz"
GOLDEN_FILE = "golden.npz"
GOLDEN_PER_CLASS = 30
LABELS_FILE = "labels.txt"
PRECISION_NAMES = {Quantization.NONE: "fp32", Quantization.FLOAT16: "fp16",
                   Quantization.DYNAMIC: "dynamic", Quantization.INT8: "int8"}
SUPPORTED = {
    ExportFormat.TFLITE: (Quantization.NONE, Quantization.FLOAT16, Quantization.DYNAMIC,
                          Quantization.INT8),
    ExportFormat.ONNX: (Quantization.NONE, Quantization.INT8),
}


@dataclasses.dataclass(frozen=True)
class Artifact:
    file: str
    format: ExportFormat
    quantization: Quantization
    seconds: float
    bytes: int


def artifact_name(export_format: ExportFormat, quantization: Quantization) -> str:
    return f"model_{PRECISION_NAMES[quantization]}.{export_format.value}"


def plan(config: ExportConfig) -> list[tuple[ExportFormat, Quantization]]:
    """The (format, quantization) pairs a config asks for, rejecting unsupported pairs."""
    formats = [ExportFormat.TFLITE, ExportFormat.ONNX] if config.format == ExportFormat.ALL \
        else [config.format]
    pairs = []
    for export_format in formats:
        wanted = config.quantize or SUPPORTED[export_format]
        for quantization in wanted:
            if quantization not in SUPPORTED[export_format]:
                if config.format == ExportFormat.ALL:
                    continue
                raise errors.ExportError(
                    f"{export_format.value} export does not support --quantize "
                    f"{quantization.value}; choose one of "
                    f"{', '.join(q.value for q in SUPPORTED[export_format])}."
                )
            pairs.append((export_format, quantization))
    if not pairs:
        raise errors.ExportError("nothing to export for that --format/--quantize combination.")
    return pairs


def calibration_images(train: datasets.Split, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of *training* images (never test images) for calibration."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(train), size=min(size, len(train)), replace=False)
    return train.images[np.sort(indices)].astype(np.float32)


def serving_function(model: Any) -> Any:
    """A tf.function with an explicit signature: tf2onnx's ``from_keras`` fails on Keras 3."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *INPUT_SHAPE], tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels: Any) -> Any:
        return {"probabilities": model(pixels, training=False)}

    return serve


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence the converters' chatter on stdout and stderr (it is not for users).

    TensorFlow's converters print from Python and log from C++ straight to file
    descriptors 1 and 2, so redirect the descriptors themselves. With EDGEKIT_DEBUG set,
    the captured text is replayed when a conversion fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {descriptor: os.dup(descriptor) for descriptor in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for descriptor in saved:
            os.dup2(sink.fileno(), descriptor)
        failed = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, copy in saved.items():
                os.dup2(copy, descriptor)
                os.close(copy)
            if failed and os.environ.get("EDGEKIT_DEBUG"):
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))


# --- TFLite -------------------------------------------------------------------------------


def to_tflite(model: Any, quantization: Quantization, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    # from_keras_model freezes Keras 3 variables into the flatbuffer; from_concrete_functions
    # on a Keras 3 model leaves READ_VARIABLE ops without data.
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == Quantization.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == Quantization.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == Quantization.INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        flatbuffer = converter.convert()
        if quantization == Quantization.FLOAT16:
            float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            flatbuffer = keep_first_conv_float32(flatbuffer, float32)
        flatbuffer = static_flatten(flatbuffer)
    except Exception as error:
        raise errors.ExportError(f"TFLite conversion ({quantization.value}) failed: "
                                 f"{str(error).splitlines()[0][:300]}") from error
    return add_tflite_metadata(flatbuffer)


def _operator_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {value: name for name, value in vars(schema.BuiltinOperator).items()
            if not name.startswith("_")}


def _operator_name(model: Any, operator: Any, names: dict[int, str]) -> str:
    code = model.operatorCodes[operator.opcodeIndex]
    return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")


def _producers(graph: Any) -> dict[int, Any]:
    """Tensor index -> the operator that writes it."""
    return {output: operator for operator in graph.operators for output in operator.outputs}


def static_flatten(flatbuffer: bytes) -> bytes:
    """Give Flatten's RESHAPE a constant target shape ``[-1, features]``.

    Keras' Flatten with a dynamic batch converts to SHAPE -> STRIDED_SLICE -> PACK ->
    RESHAPE: the batch size is read at run time. Those shape ops are not delegated to
    XNNPACK, so a single image leaves the delegate, runs four small builtin kernels and
    re-enters it. A constant ``[-1, features]`` says the same for every batch size and keeps
    the whole graph in one delegated partition. Other uses of the shape ops leave them be.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    names = _operator_names()
    graph = model.subgraphs[0]
    producers = _producers(graph)
    consumers: dict[int, int] = {}
    for operator in graph.operators:
        for tensor in operator.inputs:
            consumers[tensor] = consumers.get(tensor, 0) + 1
    dropped: list[Any] = []
    for reshape in graph.operators:
        if _operator_name(model, reshape, names) != "RESHAPE" or len(reshape.inputs) < 2:
            continue
        pack = producers.get(reshape.inputs[1])
        if pack is None or _operator_name(model, pack, names) != "PACK" or len(pack.inputs) != 2:
            continue
        sliced = producers.get(pack.inputs[0])
        width = model.buffers[graph.tensors[pack.inputs[1]].buffer].data
        if (sliced is None or _operator_name(model, sliced, names) != "STRIDED_SLICE"
                or width is None):
            continue
        shape = producers.get(sliced.inputs[0])
        if (shape is None or _operator_name(model, shape, names) != "SHAPE"
                or shape.inputs[0] != reshape.inputs[0]
                or any(consumers.get(output, 0) != 1 for output in
                       (*shape.outputs, *sliced.outputs, *pack.outputs))):
            continue
        features = int(np.frombuffer(bytes(np.asarray(width, np.uint8)), np.int32)[0])
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.array([-1, features], np.int32).tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensor = schema.TensorT()
        tensor.shape = np.array([2], np.int32)
        tensor.type = schema.TensorType.INT32
        tensor.buffer = len(model.buffers) - 1
        tensor.name = b"edgekit/flatten_shape"
        graph.tensors.append(tensor)
        reshape.inputs[1] = len(graph.tensors) - 1
        dropped += [shape, sliced, pack]
    if not dropped:
        return flatbuffer
    graph.operators = [operator for operator in graph.operators
                       if not any(operator is other for other in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _first_conv(model: Any) -> Any:
    """The CONV_2D that reads the graph's input (pixels), or None."""
    names = _operator_names()
    graph = model.subgraphs[0]
    return next((operator for operator in graph.operators
                 if _operator_name(model, operator, names) == "CONV_2D"
                 and operator.inputs[0] in graph.inputs), None)


def keep_first_conv_float32(float16: bytes, float32: bytes) -> bytes:
    """In an fp16-weight TFLite file, give the first convolution its float32 weights back.

    The first convolution reads raw pixels (all >= 0) and carries a folded batch norm: its
    outputs are a large mean minus a large offset, so fp16's 11-bit rounding of its folded
    weights is amplified by the norm's scale. On the edge model that one layer made the
    worst of 10,000 images move 3e-3 of probability (all layers: 7e-3, over the fp16 bar of
    5e-3; all but this one: 2e-3). Its weights are a few hundred numbers, so keeping them in
    float32 costs a kilobyte. The DEQUANTIZE ops that fed it are dropped; the rest of the
    graph is unchanged.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    half = flatbuffer_utils.read_model_from_bytearray(bytearray(float16))
    full = flatbuffer_utils.read_model_from_bytearray(bytearray(float32))
    half_conv, full_conv = _first_conv(half), _first_conv(full)
    if half_conv is None or full_conv is None:
        return float16
    graph, full_graph = half.subgraphs[0], full.subgraphs[0]
    producers = _producers(graph)
    dropped = []
    for position in (1, 2):  # filter, bias
        if position >= len(half_conv.inputs) or half_conv.inputs[position] < 0:
            continue
        target = graph.tensors[half_conv.inputs[position]]
        source = full_graph.tensors[full_conv.inputs[position]]
        dequantize = producers.get(half_conv.inputs[position])
        data = full.buffers[source.buffer].data
        if dequantize is None or data is None or list(target.shape) != list(source.shape):
            continue
        buffer = schema.BufferT()
        buffer.data = np.asarray(data, dtype=np.uint8)
        half.buffers.append(buffer)
        target.buffer = len(half.buffers) - 1
        target.type = schema.TensorType.FLOAT32
        dropped.append(dequantize)
    if not dropped:
        return float16
    graph.operators = [operator for operator in graph.operators
                       if not any(operator is other for other in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(half))


def _representative(calibration: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None]]
    return generate


def edgekit_metadata() -> dict[str, Any]:
    return {"labels": list(LABELS), "input": INPUT_CONTRACT, "generator": f"edgekit {__version__}"}


def add_tflite_metadata(flatbuffer: bytes) -> bytes:
    """Embed labels and the input contract as a TFLite metadata entry named ``edgekit``.

    Done with TensorFlow's flatbuffer utilities, because ``tflite-support`` (the usual
    metadata writer) has no wheels for current Pythons.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(edgekit_metadata()).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = tflite_metadata.METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# --- ONNX ---------------------------------------------------------------------------------


def to_onnx(model: Any, opset: int) -> Any:
    import tf2onnx

    function = serving_function(model)
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset)
    except Exception as error:
        raise errors.ExportError(f"ONNX conversion failed: {str(error).splitlines()[0][:300]}") from error
    fold_flatten_transpose(proto)
    fold_input_scale(proto)
    return proto


LAYOUT_OPS = ("Reshape", "Transpose")


def fold_input_scale(proto: Any) -> bool:
    """Fold the model's input Rescaling (Mul by a constant, Add of zero) into the first Conv.

    A convolution is linear, so conv(x * s) = conv with weights * s; zero padding stays zero.
    Only layout ops (Reshape/Transpose) may sit between, and the Add must add exactly 0
    (a non-zero offset would not commute with the zero padding). One elementwise pass over
    every input less, and in the int8 model no quantised Mul: the input's calibrated range
    becomes 0..255 itself. Returns False, changing nothing, when the pattern is absent.
    """
    from onnx import numpy_helper

    graph = proto.graph
    nodes = list(graph.node)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    def only_consumer(name: str) -> Any | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    source = graph.input[0].name
    mul = only_consumer(source)
    if mul is None or mul.op_type != "Mul" or mul.input[0] != source:
        return False
    scale = constant(mul.input[1])
    if scale is None or scale.size != 1:
        return False
    removed, current = [mul], only_consumer(mul.output[0])
    if current is not None and current.op_type == "Add":
        offset = constant(current.input[1])
        if offset is None or np.any(offset != 0):
            return False
        removed.append(current)
        current = only_consumer(current.output[0])
    layout = []
    while current is not None and current.op_type in LAYOUT_OPS:
        layout.append(current)
        current = only_consumer(current.output[0])
    if current is None or current.op_type != "Conv" or current.input[1] not in initializers:
        return False
    weights = initializers[current.input[1]]
    weights.CopyFrom(numpy_helper.from_array(
        (numpy_helper.to_array(weights) * scale.reshape(())).astype(np.float32), weights.name))
    first = layout[0] if layout else current
    first.input[0] = source
    del graph.node[:]
    graph.node.extend(node for node in nodes if all(node is not gone for gone in removed))
    _drop_unused_initializers(graph)
    return True


def fold_flatten_transpose(proto: Any) -> bool:
    """Remove the NCHW->NHWC Transpose that tf2onnx puts before a Keras Flatten.

    tf2onnx runs convolutions in NCHW and transposes back to NHWC so that Flatten matches
    Keras' order, then computes the flatten shape at run time (Shape, Gather, Slice,
    Concat...). Permuting the rows of the following MatMul's weights gives the same
    result from a static Reshape of the NCHW tensor, with no transpose and no shape
    arithmetic per call (measured here: about 4% more batched throughput and a lower
    single-image latency). Returns False, changing nothing, when the pattern is absent.
    """
    from onnx import helper, numpy_helper, shape_inference

    graph = proto.graph
    nodes = list(graph.node)
    transposes = [n for n in nodes if n.op_type == "Transpose"
                  and list(next((a.ints for a in n.attribute if a.name == "perm"), [])) == [0, 2, 3, 1]]
    if len(transposes) != 1:
        return False
    transpose = transposes[0]
    start = nodes.index(transpose)
    reshape_index = next((i for i in range(start + 1, len(nodes)) if nodes[i].op_type == "Reshape"),
                         None)
    if reshape_index is None or reshape_index + 1 >= len(nodes):
        return False
    reshape, matmul = nodes[reshape_index], nodes[reshape_index + 1]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    if matmul.op_type != "MatMul" or matmul.input[0] != reshape.output[0] \
            or matmul.input[1] not in initializers:
        return False
    between = nodes[start + 1:reshape_index]
    if any(node.op_type not in ("Shape", "Gather", "Cast", "Slice", "Concat", "Unsqueeze")
           for node in between):
        return False
    inferred = shape_inference.infer_shapes(proto)
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in inferred.graph.value_info}
    source_shape = shapes.get(transpose.input[0])
    if not source_shape or len(source_shape) != 4 or 0 in source_shape[1:]:
        return False
    _, channels, height, width = source_shape
    weights = numpy_helper.to_array(initializers[matmul.input[1]])
    if weights.shape[0] != channels * height * width:
        return False
    order = np.arange(channels * height * width).reshape(height, width, channels)
    permuted = weights[order.transpose(2, 0, 1).reshape(-1)]
    initializers[matmul.input[1]].CopyFrom(numpy_helper.from_array(permuted, matmul.input[1]))
    shape_name = "edgekit_flatten_shape"
    graph.initializer.append(numpy_helper.from_array(
        np.array([-1, channels * height * width], np.int64), shape_name))
    flatten = helper.make_node("Reshape", [transpose.input[0], shape_name], [reshape.output[0]],
                               name="edgekit_flatten")
    del graph.node[:]
    graph.node.extend(nodes[:start] + [flatten] + nodes[reshape_index + 1:])
    _drop_unused_initializers(graph)
    return True


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def add_onnx_metadata(proto: Any, precision: str) -> Any:
    import onnx

    metadata = edgekit_metadata()
    entries = {"labels": json.dumps(metadata["labels"]), "input": json.dumps(metadata["input"]),
               "generator": metadata["generator"], "precision": precision}
    kept = [prop for prop in proto.metadata_props if prop.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.producer_name = "edgekit"
    proto.producer_version = __version__
    return proto


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over training images, a batch at a time."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 50):
        self._batches = iter([{input_name: images[start:start + batch_size]}
                              for start in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def classifier_head(proto: Any) -> list[str]:
    """Names of the nodes that make the classifier head: the last MatMul/Gemm, everything
    after it, and the activation feeding it.

    They stay in float: the head holds a few thousand weights, and 8-bit probabilities
    (steps of 1/256) turn near-ties between two classes into flips.
    """
    nodes = list(proto.graph.node)
    last = max((index for index, node in enumerate(nodes) if node.op_type in ("MatMul", "Gemm")),
               default=None)
    if last is None:
        return []
    head = [node.name for node in nodes[last:]]
    producers = {output: node for node in nodes for output in node.output}
    feeding = producers.get(nodes[last].input[0])
    if feeding is not None and feeding.op_type in ("Relu", "Clip", "Sigmoid", "Tanh"):
        head.append(feeding.name)
    return head


def quantize_onnx(float_proto: Any, calibration: np.ndarray) -> Any:
    """Static QDQ int8 quantisation with ONNX Runtime, calibrated on training images.

    ``reduce_range`` (7-bit weights): on x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels
    can saturate 16-bit intermediate sums; measured here, full-range weights dropped
    agreement with the float model to 97.99% while 7-bit weights kept 99.02% (and the float
    classifier head takes it to 99.58%). ONNX Runtime's quantization guide recommends
    reduce_range or U8U8 on such CPUs:
    https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
    """
    import onnx
    from onnxruntime import quantization as ort_quantization

    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as scratch:
        float_path = Path(scratch) / "float.onnx"
        prepared_path = Path(scratch) / "prepared.onnx"
        int8_path = Path(scratch) / "int8.onnx"
        onnx.save(float_proto, float_path)
        ort_quantization.shape_inference.quant_pre_process(str(float_path), str(prepared_path))
        prepared = onnx.load(prepared_path)
        input_name = prepared.graph.input[0].name
        try:
            ort_quantization.quantize_static(
                str(prepared_path), str(int8_path),
                _CalibrationReader(input_name, calibration),
                quant_format=ort_quantization.QuantFormat.QDQ,
                activation_type=ort_quantization.QuantType.QUInt8,
                weight_type=ort_quantization.QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                nodes_to_exclude=classifier_head(prepared),
                calibrate_method=ort_quantization.CalibrationMethod.MinMax,
            )
        except Exception as error:
            raise errors.ExportError(f"ONNX int8 quantisation failed: {error}") from error
        return onnx.load(int8_path)


# --- the command --------------------------------------------------------------------------


STAGING_PREFIX = ".edgekit-staging-"


def export(model_path: Path, output_dir: Path, config: ExportConfig, data_dir: str | None = None,
           echo: Callable[[str], None] = print) -> list[Artifact]:
    """Export every requested artifact into ``output_dir`` and update its manifest.

    Everything is first written to a staging folder inside ``output_dir``; only when all
    files exist are they renamed into place, the manifest last. A run killed mid-way
    leaves the previous release as it was (and a staging folder the next run removes).
    """
    from edgekit.workstation import evaluation

    pairs = plan(config)
    output_dir = fileio.ensure_dir(output_dir)
    for stale in output_dir.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    model = evaluation.load_keras_model(model_path)
    dataset = datasets.load(data_dir, download=fashion_download.download)
    calibration = calibration_images(dataset.train, config.calibration_size, config.seed)
    manifest = manifest_module.load_or_empty(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        artifacts = _export_into(model, Path(model_path), output_dir, staging, manifest, pairs,
                                 config, dataset, calibration, echo)
        for staged in sorted(staging.iterdir()):
            os.replace(staged, output_dir / staged.name)
        manifest_module.save(output_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return artifacts


def _export_into(model: Any, model_path: Path, output_dir: Path, staging: Path,
                 manifest: dict[str, Any], pairs: list[tuple[ExportFormat, Quantization]],
                 config: ExportConfig, dataset: datasets.Dataset, calibration: np.ndarray,
                 echo: Callable[[str], None]) -> list[Artifact]:
    import onnx

    reference_entry = write_reference(model, model_path, output_dir, staging, dataset.test)
    if manifest.get("reference") and manifest["reference"].get("sha256") != reference_entry["sha256"]:
        # A new reference model invalidates every artifact measured against the old one.
        manifest["artifacts"] = []
    manifest["reference"] = reference_entry
    fileio.write_text(staging / LABELS_FILE, "\n".join(LABELS) + "\n")
    artifacts: list[Artifact] = []
    onnx_float = None
    for export_format, quantization in pairs:
        started = time.perf_counter()
        name = artifact_name(export_format, quantization)
        with quiet_native_output():
            if export_format == ExportFormat.TFLITE:
                payload = to_tflite(model, quantization, calibration)
            else:
                if onnx_float is None:
                    onnx_float = to_onnx(model, config.opset)
                proto = onnx_float if quantization == Quantization.NONE \
                    else quantize_onnx(onnx_float, calibration)
                payload = add_onnx_metadata(proto, PRECISION_NAMES[quantization]).SerializeToString()
                onnx.checker.check_model(onnx.load_from_string(payload))
        fileio.write_bytes(staging / name, payload)
        seconds = time.perf_counter() - started
        entry = artifact_entry(staging / name, export_format, quantization, config, seconds)
        manifest_module.upsert_artifact(manifest, entry)
        artifacts.append(Artifact(name, export_format, quantization, seconds, len(payload)))
        echo(f"exported {output_dir / name} ({fileio.human_size(len(payload))}, {seconds:.1f} s)")
    return artifacts


def artifact_entry(path: Path, export_format: ExportFormat, quantization: Quantization,
                   config: ExportConfig, seconds: float) -> dict[str, Any]:
    loaded = runtime.load(path, verify_sha256=False)
    settings: dict[str, Any] = {"seconds": round(seconds, 2)}
    if quantization == Quantization.INT8:
        settings["calibration_images"] = config.calibration_size
        settings["calibration_source"] = "training split, seeded random sample"
        settings["calibration_seed"] = config.seed
    if export_format == ExportFormat.ONNX:
        settings["opset"] = config.opset
    return {
        "file": path.name,
        "format": export_format.value,
        "precision": PRECISION_NAMES[quantization],
        "runtime": "onnxruntime" if export_format == ExportFormat.ONNX else "ai-edge-litert",
        "bytes": path.stat().st_size,
        "sha256": fileio.sha256_of(path),
        **loaded.describe(),
        "export": settings,
        "metrics": None,
    }


def write_reference(model: Any, model_path: Path, output_dir: Path, staging: Path,
                    test: datasets.Split) -> dict[str, Any]:
    """Stage the Keras model and its test-set probabilities beside the artifacts.

    The stored probabilities let ``edgekit verify`` run without TensorFlow; the golden
    bundle (a stratified few hundred test images) lets it run without the dataset.
    """
    from edgekit.workstation import evaluation

    if Path(model_path).resolve() != (output_dir / REFERENCE_FILE).resolve():
        fileio.copy_file(model_path, staging / REFERENCE_FILE)
    sha256 = fileio.sha256_of(model_path)
    probabilities = evaluation.predict_probabilities(model, test.images)
    with fileio.atomic_path(staging / REFERENCE_OUTPUTS_FILE) as temporary:
        np.savez_compressed(temporary, probabilities=probabilities, labels=test.labels,
                            model_sha256=np.array(sha256))
    golden = golden_indices(test.labels)
    with fileio.atomic_path(staging / GOLDEN_FILE) as temporary:
        np.savez_compressed(temporary, indices=golden, images=test.images[golden],
                            labels=test.labels[golden], probabilities=probabilities[golden],
                            model_sha256=np.array(sha256))
    record = training.load_record(Path(model_path)) or {}
    return {
        "file": REFERENCE_FILE,
        "format": "keras",
        "bytes": Path(model_path).stat().st_size,
        "sha256": sha256,
        "parameters": int(model.count_params()),
        "macs_per_image": models.count_macs(model),
        "architecture": record.get("config", {}).get("architecture", "unknown"),
        "training": {key: record[key] for key in
                     ("config", "epochs_run", "best_epoch", "validation_accuracy", "train_seconds",
                      "environment") if key in record},
        "test_accuracy": float((probabilities.argmax(1) == test.labels).mean()),
        "outputs_file": REFERENCE_OUTPUTS_FILE,
        "outputs_sha256": fileio.sha256_of(staging / REFERENCE_OUTPUTS_FILE),
        "golden_file": GOLDEN_FILE,
        "golden_sha256": fileio.sha256_of(staging / GOLDEN_FILE),
        "golden_images": int(len(golden)),
    }


def golden_indices(labels: np.ndarray) -> np.ndarray:
    """The first GOLDEN_PER_CLASS test images of each class, in test-set order."""
    chosen = [np.flatnonzero(labels == label)[:GOLDEN_PER_CLASS] for label in range(len(LABELS))]
    return np.sort(np.concatenate(chosen))
