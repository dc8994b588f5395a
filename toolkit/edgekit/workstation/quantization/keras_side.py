"""The float Keras model's side of a diagnosis: layers in order, their outputs, their names.

Converters name tensors after the TensorFlow name scopes of the Keras layers that made them:
``model_1/conv_2_1/Relu`` (TFLite joins the scopes of fused ops with ``;``; tf2onnx keeps them
in tensor names, ``...:0``). Keras 3 adds a ``_1`` to each scope, so a path part names a layer
when it equals the layer's name or the name plus ``_<digits>``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

SKIPPED = ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "ActivityRegularization",
           # Reshapes add no error, and converters reorder their elements (NCHW flatten).
           "Flatten", "Reshape", "Permute")


def layers_in_order(model: Any) -> list[Any]:
    """The model's layers that compute something at inference, in topological order (layers
    that only move elements are left out)."""
    return [layer for layer in model.layers if type(layer).__name__ not in SKIPPED]


def intermediate_outputs(model: Any, layers: list[Any], images: np.ndarray,
                         batch_size: int = 128) -> dict[str, np.ndarray]:
    """Every listed layer's float output on ``images``, by layer name."""
    import keras

    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    collected: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size].astype(np.float32), training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for layer, output in zip(layers, outputs, strict=True):
            collected[layer.name].append(np.asarray(output, np.float32))
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def parents(layer: Any) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes as inputs."""
    inputs = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
    names = []
    for tensor in inputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.append(history[0].name)
    return names


_SUFFIX = re.compile(r"_\d+$")


def layers_named_in(tensor_name: str, known: set[str]) -> list[str]:
    """The Keras layer names that appear as scope parts of a converter's tensor name."""
    found = []
    for path in tensor_name.split(";"):
        for part in path.split("/"):
            part = part.split(":")[0]
            for candidate in (part, _SUFFIX.sub("", part)):
                if candidate in known and candidate not in found:
                    found.append(candidate)
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
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
            counts[layer.name] = models.count_macs(_OneLayer(layer))
    return counts


class _OneLayer:
    """Just enough of a model for ``models.count_macs``: one layer."""

    def __init__(self, layer: Any):
        self.layers = [layer]
