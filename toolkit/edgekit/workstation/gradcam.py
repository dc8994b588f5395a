"""Grad-CAM (Selvaraju et al., 2017) for the Keras model, after keras-io's recipe.

The gradient of the class score with respect to the last convolutional feature map gives one
weight per channel (its mean over the map); the weighted sum of the channels, through a ReLU,
is the class-activation map, normalised to [0, 1] and up-sampled to the input size. The score
is taken before the softmax, as the paper does: a saturated probability has almost no gradient.
Workstation only (TensorFlow); the maps are compared with device-side occlusion maps in
:mod:`edgekit.device.explain`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import errors

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
BATCH_SIZE = 256


def convolution_names(model: keras.Model) -> list[str]:
    """The model's own (top-level) 2-D convolution layers, first to last."""
    return [layer.name for layer in model.layers if isinstance(layer, CONVOLUTIONS)]


def find_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer | None:
    """The layer Grad-CAM reads: ``name``, else the last convolution; None if it has none.

    An unknown name, or a layer whose output is not a [N, h, w, channels] map, is an error
    naming the layers that would do.
    """
    if name is None:
        names = convolution_names(model)
        return _block_output(model, model.get_layer(names[-1])) if names else None
    try:
        layer = model.get_layer(name)
    except ValueError:
        layer = None
    if layer is None or len(_output_shape(layer)) != 4:
        choices = ", ".join(convolution_names(model)) or "none: the model has no convolution"
        what = "is not a layer of" if layer is None else "has no [N, h, w, channels] output in"
        raise errors.ModelError(f"--layer {name!r} {what} the Keras model; its convolution "
                                f"layers are: {choices}.")
    return layer


# Layers that finish a convolution block: Grad-CAM reads the block's rectified output, as in
# Selvaraju et al. (a conv followed by batch norm and ReLU is read after the ReLU).
BLOCK_ENDS = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation)


def _block_output(model: keras.Model, convolution: keras.layers.Layer) -> keras.layers.Layer:
    """The last layer of ``convolution``'s block: its batch norm and activation, if any."""
    chosen = convolution
    for layer in model.layers[model.layers.index(convolution) + 1:]:
        activation = getattr(layer, "activation", None)
        if (not isinstance(layer, BLOCK_ENDS) or (activation is not None and _is_softmax(activation))
                or len(getattr(layer, "_inbound_nodes", [])) != 1
                or layer.input is not chosen.output):
            break
        chosen = layer
    return chosen


def _output_shape(layer: keras.layers.Layer) -> tuple[Any, ...]:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used twice, or never called
        return ()


@contextlib.contextmanager
def _scores_before_softmax(model: keras.Model) -> Iterator[Any]:
    """The model's class scores before its final softmax, as a symbolic tensor.

    A final Softmax (or Activation("softmax")) layer is skipped; a final layer with a softmax
    activation has it switched off for the duration (keras-io's recipe does the same) and
    restored afterwards. Any other output is taken as the score it is.
    """
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax):
        yield last.input
    elif _is_softmax(activation) and isinstance(last, keras.layers.Activation):
        yield last.input
    elif _is_softmax(activation):
        last.activation = keras.activations.linear
        try:
            yield model.outputs[0]
        finally:
            last.activation = activation
    else:
        yield model.outputs[0]


def _is_softmax(activation: Any) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def gradcam(model: keras.Model, images: np.ndarray, classes: np.ndarray | None = None,
            layer: keras.layers.Layer | None = None) -> np.ndarray:
    """Grad-CAM maps, float32 [N, H, W] in [0, 1], of raw uint8 ``images`` [N, H, W, C].

    ``classes``: the class each map explains (default: the model's predicted class).
    ``layer``: the feature map to read (default: the last convolution; see :func:`find_layer`).
    """
    if layer is None:
        layer = find_layer(model)
        if layer is None:
            raise errors.ModelError("the Keras model has no convolution layer, so Grad-CAM "
                                    "has no feature map to read; occlusion maps still work.")
    height, width = images.shape[1:3]
    maps = []
    with _scores_before_softmax(model) as scores:
        grad_model = keras.Model(model.inputs, [layer.output, scores])
        for start in range(0, len(images), BATCH_SIZE):
            batch = np.asarray(images[start:start + BATCH_SIZE], dtype=np.float32)
            chosen = None if classes is None else classes[start:start + BATCH_SIZE]
            maps.append(_gradcam_batch(grad_model, batch, chosen, (height, width)))
    return np.concatenate(maps)


def _gradcam_batch(grad_model: keras.Model, batch: np.ndarray, classes: np.ndarray | None,
                   size: tuple[int, int]) -> np.ndarray:
    inputs = tf.convert_to_tensor(batch)
    with tf.GradientTape() as tape:
        features, scores = grad_model(inputs, training=False)
        if classes is None:
            classes = np.asarray(tf.argmax(scores, axis=1))
        # The images are independent, so the gradient of the summed scores gives each image's own.
        chosen = tf.gather(scores, np.asarray(classes, dtype=np.int64), axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    resized = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
