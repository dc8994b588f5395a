"""A model whose int8 export fails parity for a known reason: one outlier activation channel.

A small CNN is trained on scikit-learn's digits (16x16 grey PNG folders); then, without
changing its function, one output channel of ``outlier_conv`` is multiplied by 1000 and the
depthwise 1x1 ``scale_back`` after it divides that channel by 1000. An int8 tensor with one
scale per tensor then spends its 256 steps on the outlier channel, and the other channels of
``outlier_conv``'s output round to zero. Keeping ``outlier_conv`` and ``scale_back`` float
repairs it.

``build_equalisable``/``make(..., equalisable=True)``: the same kind of fault where cross-layer
equalisation repairs it with every layer in int8: ``wide_conv -> wide_relu -> narrow_conv``,
one output channel of ``wide_conv`` multiplied by ``EQUALISABLE_FACTOR`` and the matching input
channel of ``narrow_conv`` divided by it (ReLU is positive-homogeneous: the same function).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OUTLIER_CHANNEL = 3
FACTOR = 1000.0


def digits_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = root / f"digit {target}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(np.rint(image * 255 / 16).astype(np.uint8), mode="L")
        small.resize((16, 16), Image.Resampling.BILINEAR).save(path)
    return root


def _digits_cnn(name: str, middle: Any, seed: int):  # type: ignore[no-untyped-def]
    """``scale → conv_a → middle → flatten → probabilities`` on 16x16 grey digits; ``middle``
    takes (keras, tensor) and adds the case's own layers (made in this order, so a seed gives
    the same weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = middle(keras, x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def build(seed: int = 0):  # type: ignore[no-untyped-def]
    def middle(keras: Any, x: Any) -> Any:
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="outlier_conv")(x)
        x = keras.layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer="ones",
                                         trainable=False, name="scale_back")(x)
        return keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                                   name="conv_b")(x)

    return _digits_cnn("outlier_case", middle, seed)


def add_outlier(model, channel: int = OUTLIER_CHANNEL, factor: float = FACTOR) -> None:  # type: ignore[no-untyped-def]
    """Scale one channel of ``outlier_conv`` up and ``scale_back`` down: same function."""
    kernel, bias = model.get_layer("outlier_conv").get_weights()
    kernel[..., channel] *= factor
    bias[channel] *= factor
    model.get_layer("outlier_conv").set_weights([kernel, bias])
    (depthwise,) = model.get_layer("scale_back").get_weights()
    depthwise[0, 0, channel, 0] = 1 / factor
    model.get_layer("scale_back").set_weights([depthwise])


EQUALISABLE_FACTOR = 1000.0


def build_equalisable(seed: int = 0):  # type: ignore[no-untyped-def]
    def middle(keras: Any, x: Any) -> Any:
        x = keras.layers.Conv2D(16, 3, padding="same", name="wide_conv")(x)
        x = keras.layers.ReLU(name="wide_relu")(x)
        return keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                                   name="narrow_conv")(x)

    return _digits_cnn("equalisable_case", middle, seed)


def add_equalisable_outlier(model, channel: int = OUTLIER_CHANNEL,  # type: ignore[no-untyped-def]
                            factor: float = EQUALISABLE_FACTOR) -> None:
    """Scale one output channel of ``wide_conv`` up and ``narrow_conv``'s input down."""
    kernel, bias = model.get_layer("wide_conv").get_weights()
    kernel[..., channel] *= factor
    bias[channel] *= factor
    model.get_layer("wide_conv").set_weights([kernel, bias])
    kernel, bias = model.get_layer("narrow_conv").get_weights()
    kernel[:, :, channel, :] /= factor
    model.get_layer("narrow_conv").set_weights([kernel, bias])


OFFSET = 5000.0


def build_offset(seed: int = 0):  # type: ignore[no-untyped-def]
    def middle(keras: Any, x: Any) -> Any:
        x = keras.layers.Conv2D(16, 3, padding="same", name="offset_conv")(x)
        x = keras.layers.Conv2D(16, 1, padding="same", activation="relu", name="mix")(x)
        return keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                                   name="conv_b")(x)

    return _digits_cnn("offset_case", middle, seed)


def add_offset(model, channel: int = OUTLIER_CHANNEL, offset: float = OFFSET) -> None:  # type: ignore[no-untyped-def]
    """Shift one output channel of the linear ``offset_conv`` by ``offset`` and take it back in
    ``mix``'s bias: the same function, and a fault no rescaling of channels removes (the wide
    range is an offset, not a scale), so equalisation cannot repair it."""
    kernel, bias = model.get_layer("offset_conv").get_weights()
    bias[channel] += offset
    model.get_layer("offset_conv").set_weights([kernel, bias])
    kernel, bias = model.get_layer("mix").get_weights()
    bias -= offset * kernel[0, 0, channel, :]
    model.get_layer("mix").set_weights([kernel, bias])


def make(root: Path, epochs: int = 15, equalisable: bool = False,
         offset: bool = False) -> tuple[Path, Path]:
    """The digits folder and the trained outlier model (``root/run/model.keras``); the
    equalisable or the offset variant when asked."""
    data = digits_folder(root / "digits")
    files = sorted(data.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(path))[..., None] for path in files]).astype("float32")
    labels = np.array([int(path.parent.name.split()[-1]) for path in files])
    import keras

    model = build_equalisable() if equalisable else build_offset() if offset else build()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    (add_equalisable_outlier if equalisable else add_offset if offset else add_outlier)(model)
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    return data, run / "model.keras"
