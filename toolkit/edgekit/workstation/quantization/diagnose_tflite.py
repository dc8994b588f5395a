"""A TFLite artifact's intermediate tensors, by the Keras layer that each one is the output of.

LiteRT's interpreter keeps every tensor with ``experimental_preserve_all_tensors=True``; the
XNNPACK delegate is left out (it would hide the tensors inside its partition). Tensor names are
the TensorFlow scopes of the ops fused into each TFLite op, so the latest Keras layer named is
the layer whose output the tensor holds; the graph's output is the model's last layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.workstation.quantization.keras_side import last_layer_named
from edgekit.workstation.quantization.measures import Quantised

Candidates = dict[str, list[tuple[str, np.ndarray, Quantised | None]]]


def _quantised(detail: dict[str, Any]) -> Quantised | None:
    scale, zero_point = detail["quantization"]
    if not scale or detail["dtype"] not in (np.int8, np.uint8, np.int16):
        return None
    limits = np.iinfo(detail["dtype"])
    return Quantised(float(scale), int(zero_point), int(limits.min), int(limits.max))


def _prepared(images: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    quantised = _quantised(detail)
    if quantised is None:
        return images.astype(np.float32)
    steps = np.rint(images.astype(np.float32) / quantised.scale) + quantised.zero_point
    return np.clip(steps, quantised.low, quantised.high).astype(detail["dtype"])


def _dequantised(values: np.ndarray, quantised: Quantised | None) -> np.ndarray:
    if quantised is None:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - quantised.zero_point) * quantised.scale)


def tensors_by_layer(path: Path, images: np.ndarray, order: dict[str, int],
                     last_layer: str, batch_size: int = 64) -> Candidates:
    """Every intermediate tensor of the artifact that a Keras layer name maps to, dequantised,
    on ``images`` (float32 0..255 pixels)."""
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(
        model_path=str(path), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    collected: dict[int, list[np.ndarray]] = {}
    wanted: dict[int, tuple[str, str, Quantised | None]] = {}
    size = None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if size != len(batch):
            interpreter.resize_tensor_input(input_detail["index"], [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            size = len(batch)
            wanted = _wanted(interpreter, order, last_layer, output_index, size)
        interpreter.set_tensor(input_detail["index"], _prepared(batch, input_detail))
        interpreter.invoke()
        for index, (_, _, quantised) in wanted.items():
            collected.setdefault(index, []).append(
                _dequantised(interpreter.get_tensor(index), quantised))
    candidates: Candidates = {}
    for index, (layer, name, quantised) in wanted.items():
        candidates.setdefault(layer, []).append(
            (name, np.concatenate(collected[index]), quantised))
    return candidates


def _wanted(interpreter: Any, order: dict[str, int], last_layer: str, output_index: int,
            batch: int) -> dict[int, tuple[str, str, Quantised | None]]:
    wanted = {}
    produced = {index for op in interpreter._get_ops_details() for index in op["outputs"]}
    for detail in interpreter.get_tensor_details():
        shape = detail["shape"]
        if detail["index"] not in produced or len(shape) < 2 or shape[0] != batch or detail["dtype"] not in (
                np.int8, np.uint8, np.int16, np.float32):
            continue
        layer = last_layer if detail["index"] == output_index \
            else last_layer_named(detail["name"], order)
        if layer is not None:
            wanted[detail["index"]] = (layer, detail["name"], _quantised(detail))
    return wanted
