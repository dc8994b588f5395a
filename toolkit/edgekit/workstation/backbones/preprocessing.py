"""A family's input preprocessing as one fixed layer inside the graph.

The model takes raw 0..255 pixels (the input contract); this layer does what
``keras.applications.imagenet_utils.preprocess_input`` does for the family's mode, and turns a
grey image into three equal channels:

- ``tf``: ``x / 127.5 - 1``
- ``caffe``: RGB to BGR, then minus the ImageNet mean ``[103.939, 116.779, 123.68]`` (BGR order),
  no scaling
- ``torch``: ``x / 255``, minus the mean ``[0.485, 0.456, 0.406]``, divided by the standard
  deviation ``[0.229, 0.224, 0.225]``
- ``none``: the pixels as they are (the model scales them itself)

(keras/src/applications/imagenet_utils.py, ``_preprocess_numpy_input``.) Every mode is a
per-output-channel affine map of the input channels — a channel permutation or repetition, a
scale and an offset — so it is one 1x1 ``Conv2D`` with fixed weights: plain Keras that
serialises without a Lambda, converts to TFLite and ONNX as a convolution, and brings no
Normalization layer (whose mean and variance tf2onnx makes graph inputs).
"""

from __future__ import annotations

import keras
import numpy as np

from edgekit.workstation.backbones import registry

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
LAYER_NAME = "preprocess"


def affine(mode: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The [channels, 3] matrix and [3] offset with ``output = pixels @ matrix + offset``."""
    if mode not in registry.MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}: one of {', '.join(registry.MODES)}")
    if channels not in (1, 3):
        raise ValueError(f"images have 1 or 3 channels, not {channels}")
    # Which input channel feeds each output channel: grey repeats; caffe reverses RGB to BGR.
    source = [0, 0, 0] if channels == 1 else [2, 1, 0] if mode == "caffe" else [0, 1, 2]
    scale = np.ones(3)
    offset = np.zeros(3)
    if mode == "tf":
        scale[:], offset[:] = 1.0 / 127.5, -1.0
    elif mode == "caffe":
        offset[:] = -np.asarray(CAFFE_MEAN_BGR)
    elif mode == "torch":
        std = np.asarray(TORCH_STD)
        scale = 1.0 / (255.0 * std)
        offset = -np.asarray(TORCH_MEAN) / std
    matrix = np.zeros((channels, 3))
    for output, input_channel in enumerate(source):
        matrix[input_channel, output] = scale[output]
    return matrix.astype(np.float32), offset.astype(np.float32)


def layer(mode: str, channels: int) -> keras.layers.Conv2D | None:
    """The fixed (non-trainable) 1x1 convolution for ``mode``; None when nothing is to do."""
    if mode == "none" and channels == 3:
        return None
    matrix, offset = affine(mode, channels)
    convolution = keras.layers.Conv2D(3, 1, name=LAYER_NAME, trainable=False)
    convolution.build((None, None, None, channels))
    convolution.set_weights([matrix.reshape(1, 1, channels, 3), offset])
    return convolution
