"""Gradient class maps of the Keras model: Grad-CAM, HiResCAM and LayerCAM.

All three read a convolutional feature map A [h, w, channels] and the gradient G of the class
score with respect to it, then up-sample the map to the input size and scale it to [0, 1]:

- ``gradcam`` (Selvaraju et al. 2017, keras-io's recipe): ReLU(sum_c mean_hw(G_c) * A_c). The
  gradient is averaged over the map first, which is faithful only for a global-average-pooled
  head; after Flatten it can light places the model does not read.
- ``hirescam`` (Draelos & Carin 2020, arXiv 2011.08891): ReLU(sum_c G_c * A_c), element-wise,
  so every location keeps its own gradient; exact for one dense layer after Flatten, and the
  same as Grad-CAM for a global-average-pooled head (G is then constant over the map).
- ``layercam`` (Jiang et al. 2021): ReLU(sum_c ReLU(G_c) * A_c), meant for earlier, finer layers.

The score is taken before the softmax, as the papers do (a saturated probability has almost no
gradient). Which method is the default was decided by deletion/insertion scores
(:mod:`edgekit.device.explain.faithfulness`; docs/explain.md). Workstation only (TensorFlow).

The model is re-traced on a fresh ``keras.Input`` before gradients are taken, so a Sequential
model loaded from ``.keras`` (whose layers' ``output`` belongs to a stale graph) and a model
nested inside another (a Keras Applications backbone as one layer) work too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import errors

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
BATCH_SIZE = 256
METHODS = ("gradcam", "hirescam", "layercam")
# Chosen by measurement: on the released edge model (Flatten head) HiResCAM's deletion and
# insertion scores beat random for both fills and Grad-CAM's do not; on a global-average-pooled
# model the two are the same map (docs/explain.md, "Choosing the default").
DEFAULT_METHOD = "hirescam"
TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested models' layers in place of (and after) the nested model."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def convolution_names(model: keras.Model) -> list[str]:
    """The model's 2-D convolution layers (nested models' included), first to last."""
    return [layer.name for layer in all_layers(model) if isinstance(layer, CONVOLUTIONS)]


def find_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer | None:
    """The layer the maps read: ``name``, else the last convolution's block; None if none.

    An unknown name, or a layer whose output is not a [N, h, w, channels] map, is an error
    naming the layers that would do.
    """
    layers = all_layers(model)
    if name is None:
        convolutions = [layer for layer in layers if isinstance(layer, CONVOLUTIONS)]
        return _block_output(model, convolutions[-1]) if convolutions else None
    layer = next((candidate for candidate in layers if candidate.name == name), None)
    if layer is None or len(_output_shape(layer)) != 4:
        choices = ", ".join(convolution_names(model)) or "none: the model has no convolution"
        what = "is not a layer of" if layer is None else "has no [N, h, w, channels] output in"
        raise errors.ModelError(f"--layer {name!r} {what} the Keras model; its convolution "
                                f"layers are: {choices}.")
    return layer


# Layers that finish a convolution block: the maps read the block's rectified output, as in
# Selvaraju et al. (a conv followed by batch norm and ReLU is read after the ReLU).
BLOCK_ENDS = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation)


def _container(model: keras.Model, layer: keras.layers.Layer) -> keras.Model:
    """The (possibly nested) model whose own layers include ``layer``."""
    if any(own is layer for own in model.layers):
        return model
    for own in model.layers:
        if isinstance(own, keras.Model) and any(inner is layer for inner in all_layers(own)):
            return _container(own, layer)
    return model


def _block_output(model: keras.Model, convolution: keras.layers.Layer) -> keras.layers.Layer:
    """The last layer of ``convolution``'s block: its batch norm and activation, if any."""
    container = _container(model, convolution)
    sequential = isinstance(container, keras.Sequential)
    chosen = convolution
    for layer in container.layers[container.layers.index(convolution) + 1:]:
        activation = getattr(layer, "activation", None)
        if not isinstance(layer, BLOCK_ENDS) or (activation is not None and _is_softmax(activation)):
            break
        # Its first call (later ones are re-traces by gradient_model) reads the block so far.
        if not sequential and layer.input is not chosen.output:
            break
        chosen = layer
    return chosen


def _output_shape(layer: keras.layers.Layer) -> tuple[Any, ...]:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a layer never called
        return ()


def _final_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that makes the model's output, inside nested models too."""
    history = getattr(model.outputs[0], "_keras_history", None) if model.outputs else None
    last = history.operation if history is not None else model.layers[-1]
    return _final_layer(last) if isinstance(last, keras.Model) else last


@contextlib.contextmanager
def _linear_scores(model: keras.Model) -> Iterator[keras.layers.Layer | None]:
    """Yields a final Softmax layer to skip when tracing, if there is one; a final layer with a
    softmax activation has it switched off for the duration (keras-io's recipe does the same)
    and restored afterwards. Any other output is taken as the score it is."""
    last = _final_layer(model)
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax) or (
            _is_softmax(activation) and isinstance(last, keras.layers.Activation)):
        yield last
    elif _is_softmax(activation):
        last.activation = keras.activations.linear
        try:
            yield None
        finally:
            last.activation = activation
    else:
        yield None


def _is_softmax(activation: Any) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def _trace(model: keras.Model, tensor: Any, target: keras.layers.Layer,
           skip: keras.layers.Layer | None, found: dict[str, Any]) -> Any:
    """Call ``model``'s layers again on ``tensor``; ``found["features"]`` gets ``target``'s new
    output. Nested models holding the target (or the layer to skip) are traced into."""
    inner = [layer for layer in (target, skip) if layer is not None]

    def run(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer is skip:
            result = args[0]
        elif isinstance(layer, keras.Model) and any(
                candidate is wanted for candidate in all_layers(layer) for wanted in inner):
            result = _trace(layer, args[0], target, skip, found)
        else:
            result = layer(*args, **kwargs)
        if layer is target:
            found["features"] = result
        return result

    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            tensor = run(layer, tensor)
        return tensor
    # Keras' own graph walk (what Functional.call does), with each layer called through `run`.
    result = model._run_through_graph(tensor, operation_fn=lambda op: functools.partial(run, op))
    return result[0] if isinstance(result, list | tuple) else result


def gradient_model(model: keras.Model, layer: keras.layers.Layer,
                   skip: keras.layers.Layer | None) -> keras.Model:
    """A functional model from raw pixels to [``layer``'s output, class scores]."""
    source = model.inputs[0]
    fresh = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype)
    found: dict[str, Any] = {}
    scores = _trace(model, fresh, layer, skip, found)
    if "features" not in found:
        raise errors.ModelError(f"layer {layer.name!r} is not on the path from the Keras model's "
                                "input to its output, so no map can be read from it.")
    return keras.Model(fresh, [found["features"], scores])


def class_maps(model: keras.Model, images: np.ndarray, classes: np.ndarray | None = None,
               layer: keras.layers.Layer | None = None,
               method: str = DEFAULT_METHOD) -> np.ndarray:
    """Class maps, float32 [N, H, W] in [0, 1], of raw uint8 ``images`` [N, H, W, C].

    ``classes``: the class each map explains (default: the model's predicted class).
    ``layer``: the feature map to read (default: the last convolution; see :func:`find_layer`).
    ``method``: one of :data:`METHODS`.
    """
    if method not in METHODS:
        raise errors.ModelError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    if layer is None:
        layer = find_layer(model)
        if layer is None:
            raise errors.ModelError("the Keras model has no convolution layer, so a gradient "
                                    "map has no feature map to read; occlusion maps still work.")
    height, width = images.shape[1:3]
    maps = []
    with _linear_scores(model) as skip:
        grad_model = gradient_model(model, layer, skip)
        for start in range(0, len(images), BATCH_SIZE):
            batch = np.asarray(images[start:start + BATCH_SIZE], dtype=np.float32)
            chosen = None if classes is None else classes[start:start + BATCH_SIZE]
            maps.append(_batch_maps(grad_model, batch, chosen, (height, width), method))
    return np.concatenate(maps)


def gradcam(model: keras.Model, images: np.ndarray, classes: np.ndarray | None = None,
            layer: keras.layers.Layer | None = None) -> np.ndarray:
    """Grad-CAM maps (:func:`class_maps` with ``method="gradcam"``)."""
    return class_maps(model, images, classes, layer, "gradcam")


def _batch_maps(grad_model: keras.Model, batch: np.ndarray, classes: np.ndarray | None,
                size: tuple[int, int], method: str) -> np.ndarray:
    inputs = tf.convert_to_tensor(batch)
    with tf.GradientTape() as tape:
        features, scores = grad_model(inputs, training=False)
        if classes is None:
            classes = np.asarray(tf.argmax(scores, axis=1))
        # The images are independent, so the gradient of the summed scores gives each image's own.
        chosen = tf.gather(scores, np.asarray(classes, dtype=np.int64), axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, features)
    if gradients is None:
        raise errors.ModelError("the class score has no gradient with respect to the chosen "
                                "layer, so no gradient map can be made; occlusion maps still work.")
    if method == "gradcam":
        cam = tf.einsum("nhwc,nc->nhw", features, tf.reduce_mean(gradients, axis=(1, 2)))
    elif method == "hirescam":
        cam = tf.reduce_sum(gradients * features, axis=3)
    else:
        cam = tf.reduce_sum(tf.nn.relu(gradients) * features, axis=3)
    cam = tf.nn.relu(cam)
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    resized = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
