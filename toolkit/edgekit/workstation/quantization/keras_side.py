"""The float Keras model's side of a diagnosis: layers in order, their outputs, their names.

Converters name tensors after the TensorFlow name scopes of the Keras layers that made them:
``model_1/conv_2_1/Relu`` (TFLite joins the scopes of fused ops with ``;``; tf2onnx keeps them
in tensor names, ``...:0``). Keras 3 traces each layer under its name plus a ``_<n>`` that makes
the scope unique (see ``scope_layer``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

SKIPPED = ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "ActivityRegularization",
           # Reshapes add no error, and converters reorder their elements (NCHW flatten).
           "Flatten", "Reshape", "Permute")


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def layers_in_order(model: Any) -> list[Any]:
    """The model's layers that compute something at inference, in topological order (layers
    that only move elements are left out); a nested model (a user's model wrapped at export)
    is replaced by its own layers."""
    found = []
    for layer in model.layers:
        if _is_model(layer):
            found += layers_in_order(layer)
        elif type(layer).__name__ not in SKIPPED:
            found.append(layer)
    return found


def _outer_inputs(layer: Any) -> list[Any]:
    """The tensors a layer was called on in its enclosing model (for a nested model too)."""
    tensors = layer._inbound_nodes[0].input_tensors
    return list(tensors) if isinstance(tensors, list | tuple) else [tensors]


def intermediate_outputs(model: Any, images: np.ndarray, batch_size: int = 128
                         ) -> dict[str, np.ndarray]:
    """Every computing layer's float output on ``images``, by layer name (nested models too)."""
    import keras

    direct = [layer for layer in model.layers
              if not _is_model(layer) and type(layer).__name__ != "InputLayer"]
    nested = [layer for layer in model.layers if _is_model(layer)]
    probes = [layer.output for layer in direct] + [_outer_inputs(layer)[0] for layer in nested]
    probe = keras.Model(model.inputs, probes)
    collected: list[list[np.ndarray]] = [[] for _ in probes]
    for start in range(0, len(images), batch_size):
        # The probe's inputs are a list (model.inputs): given as one, with no structure warning.
        outputs = probe([images[start:start + batch_size].astype(np.float32)], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for parts, output in zip(collected, outputs, strict=True):
            parts.append(np.asarray(output, np.float32))
    values = [np.concatenate(parts) for parts in collected]
    result = {layer.name: value for layer, value in zip(direct, values, strict=False)}
    for layer, value in zip(nested, values[len(direct):], strict=True):
        result.update(intermediate_outputs(layer, value, batch_size))
    return result


def parent_map(model: Any) -> dict[str, list[str]]:
    """Layer name -> names of the layers feeding it; a nested model stands for its output layers
    and its input layer for what feeds the nested model."""
    result: dict[str, list[str]] = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        result[layer.name] = parents(layer, outer=_is_model(layer))
        if _is_model(layer):
            result.update(parent_map(layer))
            for inner_input in layer.inputs:
                result[inner_input._keras_history[0].name] = result[layer.name]
            result[layer.name] = [tensor._keras_history[0].name for tensor in layer.outputs]
    return result


def parents(layer: Any, outer: bool = False) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes as inputs."""
    inputs = _outer_inputs(layer) if outer else (
        layer.input if isinstance(layer.input, list | tuple) else [layer.input])
    names = []
    for tensor in inputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.append(history[0].name)
    return names


_SUFFIX = re.compile(r"_\d+$")


def scope_layer(part: str, known: set[str]) -> str | None:
    """The layer a scope part names. Keras 3 layers are traced under a uniquified scope, one
    ``_<n>`` added to the name (layer ``conv2d`` -> ``conv2d_1``, layer ``conv2d_1`` ->
    ``conv2d_1_2``), so the part less its last ``_<n>`` is tried first, then the part as is."""
    part = part.split(":")[0]
    stripped = _SUFFIX.sub("", part)
    if stripped != part and stripped in known:
        return stripped
    return part if part in known else None


def layers_named_in(tensor_name: str, known: set[str]) -> list[str]:
    """The Keras layer names that appear as scope parts of a converter's tensor name."""
    found = []
    for path in tensor_name.split(";"):
        for part in path.split("/"):
            layer = scope_layer(part, known)
            if layer is not None and layer not in found:
                found.append(layer)
    return found


def last_layer_named(tensor_name: str, order: dict[str, int]) -> str | None:
    """The latest layer (topological order) named in a tensor name: a fused op's output is its
    last layer's output."""
    named = layers_named_in(tensor_name, set(order))
    return max(named, key=order.__getitem__) if named else None


def macs_by_layer(model: Any) -> dict[str, int]:
    """Multiply-accumulates per image of each Conv2D, DepthwiseConv2D and Dense layer."""
    import keras

    from edgekit.workstation import models

    counts = {}
    for layer in layers_in_order(model):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
            counts[layer.name] = models.count_macs(_OneLayer(layer))
    return counts


def int8_macs_share(macs: dict[str, int], keep_float: tuple[str, ...] | list[str]) -> float:
    """The share of the arithmetic layers' MACs left in int8 when ``keep_float`` is float."""
    total = sum(macs.values())
    kept = sum(macs.get(name, 0) for name in set(keep_float))
    return round(1.0 - kept / total, 4) if total else 1.0


class _OneLayer:
    """Just enough of a model for ``models.count_macs``: one layer."""

    def __init__(self, layer: Any):
        self.layers = [layer]
