"""Keeping named Keras layers in float inside the int8 files, with the converters' own levers.

TFLite: TensorFlow's ``QuantizationDebugger`` calibrates the model and re-quantises it with a
denylist of TFLite nodes (the output tensor names of the ops a kept Keras layer was fused into)
and ``fully_quantize=True``, so the file keeps int8 input and output. ONNX: ONNX Runtime's
``quantize_static(nodes_to_exclude=...)`` with the nodes whose output tensors carry a kept
layer's name (see ``export.onnx.quantize_onnx``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgekit import errors
from edgekit.workstation.export import tflite_graph
from edgekit.workstation.quantization.keras_side import layers_in_order, layers_named_in


def check_names(model: Any, keep: tuple[str, ...]) -> None:
    known = {layer.name for layer in layers_in_order(model)}
    unknown = [name for name in keep if name not in known]
    if unknown:
        raise errors.ExportError(
            f"--keep-float: the model has no layer named {', '.join(map(repr, unknown))}; its "
            f"layers are {', '.join(sorted(known))}.")


def tflite_nodes(flatbuffer: bytes, keep: tuple[str, ...]) -> list[str]:
    """Output tensor names of the TFLite ops that compute (part of) a kept Keras layer."""
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_content=flatbuffer)
    names = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    wanted = set(keep)
    return sorted({names[index] for op in interpreter._get_ops_details()
                   for index in op["outputs"] if wanted & set(layers_named_in(names[index], wanted))})


def int8_keeping_float(model: Any, calibration: np.ndarray, keep: tuple[str, ...]) -> bytes:
    """A full-integer TFLite flatbuffer (int8 input and output) with ``keep`` left float."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calibration)
    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    nodes = tflite_nodes(float_model, keep)
    if not nodes:
        raise errors.ExportError(f"--keep-float: no TFLite op computes {', '.join(keep)}.")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes,
                                                            fully_quantize=True)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_representative(calibration), debug_options=options)
    return bytes(debugger.get_nondebug_quantized_model())


def _representative(calibration: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None].astype(np.float32)]
    return generate


def dynamic_keeping_float(dynamic: bytes, float32: bytes, keep: tuple[str, ...]) -> bytes:
    """A dynamic-range TFLite flatbuffer whose kept layers run in float.

    TensorFlow's dynamic-range quantiser has no denylist, so the edit is made after it, the way
    the fp16 file's first convolution gets float32 weights back (``export.tflite_graph``): each
    op computing a kept layer (matched by output tensor name in the fp32 conversion) gets its
    int8 constant inputs replaced by the fp32 conversion's float32 ones, which makes a hybrid
    op a float op (LiteRT picks the kernel by the weights' type).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(dynamic))
    full = flatbuffer_utils.read_model_from_bytearray(bytearray(float32))
    graph, full_graph = model.subgraphs[0], full.subgraphs[0]
    wanted = set(keep)

    def name(tensor: Any) -> str:
        raw = tensor.name
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    full_ops = {name(full_graph.tensors[op.outputs[0]]): op for op in full_graph.operators}
    changed = 0
    for operator in graph.operators:
        output = name(graph.tensors[operator.outputs[0]])
        source_op = full_ops.get(output)
        if source_op is None or not wanted & set(layers_named_in(output, wanted)):
            continue
        for position, index in enumerate(operator.inputs):
            if index < 0 or position >= len(source_op.inputs):
                continue
            target = graph.tensors[index]
            source = full_graph.tensors[source_op.inputs[position]]
            data = full.buffers[source.buffer].data
            if target.type != schema.TensorType.INT8 or data is None \
                    or list(target.shape) != list(source.shape):
                continue
            tflite_graph.set_float32_data(model, target, data)
            target.quantization = None
            changed += 1
    if not changed:
        return dynamic
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
