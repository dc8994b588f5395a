"""Input preprocessing as Keras layers: what a model expects, built into its graph.

Every edgekit artifact takes raw 0..255 pixels, so a model that expects something else gets
its preprocessing folded in front as plain layers that every converter takes (``Rescaling``
and a fixed 1x1 convolution; no ``Lambda``, no ``Normalization``, whose statistics tf2onnx
would turn into graph inputs). The modes are Keras' own, as
``keras.applications.imagenet_utils.preprocess_input`` defines them:

- ``0-255``: nothing; ``0-1``: ``x / 255``; ``-1-1`` (Keras' ``tf`` mode): ``x / 127.5 - 1``;
- ``caffe``: RGB -> BGR, then the ImageNet mean (in BGR) subtracted, no scaling;
- ``torch``: ``x / 255``, then ``(x - mean) / std`` with ImageNet's RGB mean and std
  (both from :mod:`edgekit.workstation.backbones.preprocessing`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit import errors

INPUT_RANGES = ("0-255", "0-1", "-1-1", "caffe", "torch")
RGB_ONLY = ("caffe", "torch")

# Keras Applications families by the name their constructor gives the model, and the
# preprocessing their preprocess_input applies (None: the model has its own inside, with
# include_preprocessing, so it takes 0..255 as it is).
FAMILY_INPUT_RANGES = (
    ("mobilenetv3", None), ("mobilenetv2", "-1-1"), ("mobilenet", "-1-1"),
    ("efficientnetv2", None), ("efficientnet", None), ("convnext", None),
    ("resnet50v2", "-1-1"), ("resnet101v2", "-1-1"), ("resnet152v2", "-1-1"),
    ("resnet", "caffe"), ("vgg", "caffe"), ("densenet", "torch"),
    ("inception", "-1-1"), ("xception", "-1-1"), ("nasnet", "-1-1"), ("regnet", None),
)


def family_input_range(names: list[str]) -> tuple[str, str | None] | None:
    """(family, expected input range) for the first name that says its family, else None."""
    for name in names:
        compact = name.lower().replace("_", "").replace("-", "")
        for family, input_range in FAMILY_INPUT_RANGES:
            if compact.startswith(family):
                return family, input_range
    return None


def preprocessing_layers(input_range: str, channels: int) -> list[Any]:
    """The layers mapping 0..255 pixels to what a model of ``input_range`` expects."""
    import keras

    if input_range not in INPUT_RANGES:
        raise errors.ModelError(f"unknown input range {input_range!r}; choose one of "
                                f"{', '.join(INPUT_RANGES)}.")
    if input_range in RGB_ONLY and channels != 3:
        raise errors.ModelError(f"--input-range {input_range} is ImageNet's RGB preprocessing; the "
                                f"model takes {channels} channel(s). Use 0-255, 0-1 or -1-1.")
    if input_range == "0-255":
        return []
    if input_range == "0-1":
        return [keras.layers.Rescaling(1 / 255, name="edgekit_scale")]
    if input_range == "-1-1":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="edgekit_scale")]
    from edgekit.workstation.backbones import preprocessing as backbone_preprocessing

    # caffe and torch: the same fixed 1x1 convolution `edgekit train --arch` puts in front of a
    # backbone (a channel permutation, a scale and an offset per channel).
    return [backbone_preprocessing.layer(input_range, channels)]


def reference_preprocess(pixels: np.ndarray, input_range: str) -> np.ndarray:
    """Keras' own ``preprocess_input`` for a mode (the check the layers above are held to)."""
    from keras.applications import imagenet_utils

    pixels = np.array(pixels, dtype=np.float32)
    if input_range == "0-255":
        return pixels
    if input_range == "0-1":
        return pixels / 255
    mode = {"-1-1": "tf", "caffe": "caffe", "torch": "torch"}[input_range]
    return np.asarray(imagenet_utils.preprocess_input(pixels, mode=mode, data_format="channels_last"))
