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
from edgekit.workstation.quantization.keras_side import layers_named_in


def check_names(model: Any, keep: tuple[str, ...]) -> None:
    known = {layer.name for layer in model.layers}
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
