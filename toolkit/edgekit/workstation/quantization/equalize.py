"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.1): a function-preserving rescaling of channels.

For consecutive layers L1 -> (BatchNormalization) -> positive-homogeneous activations -> L2,
where L1's output channels feed only L2, ``f(x / s) = f(x) / s`` for ``s > 0`` lets channel i of
L1's output be divided by ``s_i`` and L2's matching input channel be multiplied by it. With
``r1_i`` the range of L1's output-channel weights (the BN-folded weights when a BatchNormalization
follows) and ``r2_i`` the range of L2's input-channel weights, the paper's
``s_i = sqrt(r1_i / r2_i)`` makes both ranges ``sqrt(r1_i * r2_i)``: one wide channel no longer
sets the quantisation step of the whole activation tensor. Layers: Conv2D (one group),
DepthwiseConv2D (depth multiplier 1 as L1), Dense. Activations allowed between them: ReLU
(no cap, no threshold), LeakyReLU, linear; ReLU6, hard-swish, sigmoid and the like are not
positive-homogeneous and stop a pair. Pairs that do not qualify are skipped, never refused.

Applied to a copy of the Keras model used for conversion; the release's ``model.keras`` stays
the user's model and parity is measured against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit import errors
from edgekit.workstation.quantization import keras_side

HOMOGENEOUS = ("linear", "relu", "leaky_relu")
PASS_THROUGH = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                "ActivityRegularization")
# Output-channel axis of L1's kernel, input-channel axis of L2's kernel.
OUT_AXIS = {"Conv2D": 3, "DepthwiseConv2D": 2, "Dense": 1}
IN_AXIS = {"Conv2D": 2, "DepthwiseConv2D": 2, "Dense": 0}
PASSES = 20  # sequential sweeps over chained pairs (the paper iterates to convergence)
Pair = tuple[str, str]


def all_layers(model: Any) -> dict[str, Any]:
    """Every layer by name, nested models' layers included."""
    import keras

    found: dict[str, Any] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(all_layers(layer))
        found[layer.name] = layer
    return found


def _kind(layer: Any) -> str | None:
    name = type(layer).__name__
    if name == "Conv2D" and layer.groups != 1:
        return None
    return name if name in OUT_AXIS else None


def _activation(layer: Any) -> str:
    return str(layer.get_config().get("activation", "linear"))


def _homogeneous(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind in PASS_THROUGH or kind == "LeakyReLU":
        return True
    if kind == "ReLU":
        config = layer.get_config()
        return config.get("max_value") is None and not config.get("threshold")
    if kind == "Activation":
        return _activation(layer) in HOMOGENEOUS
    return False


def _children(parents: dict[str, list[str]]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for child, feeding in parents.items():
        for parent in feeding:
            children.setdefault(parent, []).append(child)
    return children


def chain(model: Any, first: str) -> tuple[str | None, str | None]:
    """(batch norm between, L2) when ``first`` starts an equalisable pair, else (None, None)."""
    layers = all_layers(model)
    children = _children(keras_side.parent_map(model))
    l1 = layers[first]
    kind = _kind(l1)
    if kind is None or _activation(l1) not in HOMOGENEOUS:
        return None, None
    if kind == "DepthwiseConv2D" and l1.depth_multiplier != 1:
        return None, None
    norm, current = None, first
    while True:
        following = children.get(current, [])
        if len(following) != 1 or following[0] not in layers:
            return None, None
        layer = layers[following[0]]
        if (type(layer).__name__ == "BatchNormalization" and norm is None and current == first
                and _activation(l1) == "linear" and layer.get_config().get("scale", True)
                and layer.axis in (-1, [-1], len(l1.output.shape) - 1,
                                   [len(l1.output.shape) - 1])):
            norm = layer.name
        elif _homogeneous(layer):
            pass
        elif _kind(layer) is not None:
            channels = int(l1.kernel.shape[OUT_AXIS[kind]])
            inputs = int(layer.kernel.shape[IN_AXIS[_kind(layer) or ""]])
            return (norm, layer.name) if channels == inputs else (None, None)
        else:
            return None, None
        current = layer.name


def pairs(model: Any) -> list[Pair]:
    """Every equalisable (L1, L2) pair of the model, in network order."""
    found = []
    for layer in keras_side.layers_in_order(model):
        _, second = chain(model, layer.name)
        if second is not None:
            found.append((layer.name, second))
    return found


def _out_ranges(l1: Any, norm: Any, kind: str) -> np.ndarray:
    kernel = np.asarray(l1.kernel)
    axis = OUT_AXIS[kind]
    ranges = np.abs(np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)).max(axis=1)
    if norm is not None:
        gamma = np.asarray(norm.gamma)
        ranges = ranges * np.abs(gamma) / np.sqrt(np.asarray(norm.moving_variance) + norm.epsilon)
    return np.asarray(ranges, np.float64)


def _in_ranges(l2: Any) -> np.ndarray:
    kernel = np.asarray(l2.kernel)
    axis = IN_AXIS[_kind(l2) or ""]
    return np.asarray(np.abs(np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1))
                      .max(axis=1), np.float64)


def _scale_axis(array: np.ndarray, axis: int, factors: np.ndarray) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = -1
    return (array * factors.reshape(shape)).astype(array.dtype)


def equalize_pair(model: Any, pair: Pair) -> np.ndarray:
    """Rescale one pair in place; returns the scales ``s_i`` (1 where a range is zero)."""
    layers = all_layers(model)
    norm_name, second = chain(model, pair[0])
    if second != pair[1]:
        raise errors.ExportError(f"equalisation: {pair[0]} -> {pair[1]} is not an equalisable "
                                 "pair (see quantization.equalize).")
    l1, l2 = layers[pair[0]], layers[pair[1]]
    kind = _kind(l1) or ""
    norm = layers[norm_name] if norm_name else None
    r1, r2 = _out_ranges(l1, norm, kind), _in_ranges(l2)
    usable = (r1 > 0) & (r2 > 0)
    scales = np.ones_like(r1)
    scales[usable] = np.sqrt(r1[usable] / r2[usable])
    if norm is None:
        weights = l1.get_weights()
        weights[0] = _scale_axis(weights[0], OUT_AXIS[kind], 1 / scales)
        if l1.use_bias:
            weights[1] = (weights[1] / scales).astype(weights[1].dtype)
        l1.set_weights(weights)
    else:
        norm.gamma.assign(np.asarray(norm.gamma) / scales)
        if norm.center:
            norm.beta.assign(np.asarray(norm.beta) / scales)
    weights = l2.get_weights()
    weights[0] = _scale_axis(weights[0], IN_AXIS[_kind(l2) or ""], scales)
    l2.set_weights(weights)
    return scales


def equalize_in_place(model: Any, chosen: list[Pair] | tuple[Pair, ...]) -> None:
    """Equalise ``chosen`` pairs; chained pairs (L1 -> L2 -> L3) are swept until the scales
    settle."""
    for _ in range(PASSES):
        largest = max((float(np.abs(np.log(equalize_pair(model, pair))).max())
                       for pair in chosen), default=0.0)
        if largest < 1e-4:
            break


def equalized_copy(model: Any, chosen: list[Pair] | tuple[Pair, ...]) -> Any:
    """A copy of ``model`` (nested models too) with ``chosen`` pairs equalised."""
    import keras

    copy = keras.models.clone_model(model, recursive=True)
    originals, copies = all_layers(model), all_layers(copy)
    for name, layer in originals.items():
        if not isinstance(layer, keras.Model) and layer.weights:
            copies[name].set_weights(layer.get_weights())
    equalize_in_place(copy, chosen)
    return copy
