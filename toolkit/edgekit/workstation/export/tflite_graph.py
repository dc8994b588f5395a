"""Edits of a converted TFLite flatbuffer (TensorFlow's flatbuffer utilities).

A constant target shape for Flatten's RESHAPE, and the fp16 model's first convolution
kept in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def set_float32_data(model: Any, tensor: Any, data: Any) -> None:
    """Give ``tensor`` a buffer of its own holding ``data`` (the fp32 model's bytes of the
    same tensor) and make it float32: a weight the converter quantised, put back in float."""
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.asarray(data, dtype=np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1
    tensor.type = schema.TensorType.FLOAT32


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
        set_float32_data(half, target, data)
        dropped.append(dequantize)
    if not dropped:
        return float16
    graph.operators = [operator for operator in graph.operators
                       if not any(operator is other for other in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(half))

