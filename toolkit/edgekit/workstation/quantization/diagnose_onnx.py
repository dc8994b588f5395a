"""An ONNX QDQ artifact's intermediate tensors, by the Keras layer that each one is the output of.

Every float tensor a node writes becomes a graph output (as ONNX Runtime's ``qdq_loss_debug``
does, but keeping shapes), the graph runs with optimisations off so the QuantizeLinear/
DequantizeLinear pairs stay, and a tensor ``X`` quantised by the pair is read after it
(``X_DequantizeLinear_Output``: what the next node sees) with the pair's scale and zero point.
tf2onnx names tensors after the Keras layers' TensorFlow scopes (``model_1/conv_1/Relu:0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.workstation.quantization.diagnose_tflite import Candidates
from edgekit.workstation.quantization.keras_side import last_layer_named
from edgekit.workstation.quantization.measures import Quantised

DEQUANTISED = "_DequantizeLinear_Output"


LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _quantisation(proto: Any) -> dict[str, Quantised]:
    """Quantised activation tensor -> its QuantizeLinear's scale and zero point."""
    from onnx import numpy_helper

    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    found = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        scale = constants.get(node.input[1])
        zero = constants.get(node.input[2]) if len(node.input) > 2 else np.uint8(0)
        if scale is None or zero is None or np.size(scale) != 1:
            continue
        limits = np.iinfo(np.asarray(zero).dtype)
        found[node.input[0]] = Quantised(float(scale), int(zero), int(limits.min), int(limits.max))
    return found


def tensors_by_layer(path: Path, images: np.ndarray, order: dict[str, int],
                     last_layer: str) -> Candidates:
    """Every tensor of the artifact that a Keras layer name maps to, as the graph computes it
    on ``images`` (float32 0..255 pixels), after its quantise-dequantise pair if it has one."""
    import onnx
    import onnxruntime

    proto = onnx.load(str(path))
    quantised = _quantisation(proto)
    constants = {tensor.name for tensor in proto.graph.initializer}
    graph_output = proto.graph.output[0].name
    # Layout ops only move values: their output is the previous layer's tensor, yet tf2onnx
    # names it in the scope of the layer that reads it (a depthwise convolution's input Reshape
    # is "block_15_depthwise/..."), which would blame that layer for its input's error.
    produced = {output for node in proto.graph.node for output in node.output
                if node.op_type not in ("QuantizeLinear", *LAYOUT_OPS) and not
                (node.op_type == "DequantizeLinear" and node.input[0] in constants)}
    existing = {output.name for output in proto.graph.output}
    inferred = onnx.shape_inference.infer_shapes(proto)
    floats = {info.name for info in inferred.graph.value_info
              if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    for name in sorted((produced & floats) - existing):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                     None))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name:
                                                 images.astype(np.float32)}), strict=True))
    candidates: Candidates = {}
    for name, value in values.items():
        if name.endswith(DEQUANTISED) or value.dtype != np.float32 or value.ndim < 2 \
                or value.shape[0] != len(images):
            continue
        layer = last_layer if name == graph_output else last_layer_named(name, order)
        if layer is None:
            continue
        after = name + DEQUANTISED
        if name in quantised and after in values:
            candidates.setdefault(layer, []).append((name, values[after], quantised[name]))
        else:
            candidates.setdefault(layer, []).append((name, value, None))
    return candidates
