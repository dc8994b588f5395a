"""Model architectures (workstation only: imports Keras)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from edgekit.contract import FASHION_MNIST, InputContract
from edgekit.workstation.config import Architecture, TrainConfig


def build(config: TrainConfig, contract: InputContract = FASHION_MNIST) -> keras.Model:
    """The architecture for the contract's input size, channels and number of classes.

    A Keras Applications family is built with its backbone frozen, holding ``config.weights``
    (:mod:`edgekit.workstation.backbones.finetune`).
    """
    if config.architecture.is_backbone:
        from edgekit.workstation.backbones import finetune

        return finetune.build(config, contract)
    builders = {Architecture.REFERENCE: build_reference, Architecture.EDGE: build_edge}
    return builders[config.architecture](config, contract)


def describe_backbone(config: TrainConfig, contract: InputContract) -> dict[str, Any]:
    """{"backbone": its record} for a fine-tuned backbone (train_config.json), else {}."""
    if not config.architecture.is_backbone:
        return {}
    from edgekit.workstation.backbones import finetune

    return {"backbone": finetune.describe(config, contract)}


def epoch_runner(config: TrainConfig) -> Callable[..., None]:
    """What runs a training run's epochs: ``distribute.run_epochs``, or for a backbone its
    two phases (``backbones.finetune.run_phases``, the same arguments)."""
    if not config.architecture.is_backbone:
        from edgekit.workstation import distribute

        return distribute.run_epochs
    from edgekit.workstation.backbones import finetune

    return finetune.run_phases


def build_reference(config: TrainConfig, contract: InputContract) -> keras.Model:
    """The reference notebook's CNN: two conv + max-pool blocks, dense, dropout, softmax.

    The input is raw 0-255 pixels as float32; scaling sits inside the graph so that every
    exported artifact shares one input contract (keras-io's image_classification_from_scratch).
    """
    first, second = config.conv_filters
    inputs = keras.Input(shape=contract.shape, dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Conv2D(first, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(second, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(x)
    outputs = keras.layers.Dense(contract.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgekit_{config.architecture.value}")


def _conv_bn(x: keras.KerasTensor, filters: int, name: str, strides: int = 1,
             kernel: int = 3) -> keras.KerasTensor:
    """Conv (no bias) + batch norm + ReLU; converters fold the norm into the conv."""
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _residual(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return keras.layers.Add(name=f"{name}_add")([x, _conv_bn(x, int(x.shape[-1]), name)])


EDGE_SQUEEZE = 16  # channels kept at 7x7 before the positional head


def build_edge(config: TrainConfig, contract: InputContract) -> keras.Model:
    """A compact network for int8 devices.

    A stem (``config.edge_stem``: "pool", a 3x3 conv at 28x28 then max-pool; or "stride2",
    a 5x5 conv with stride 2 straight to 14x14), a 3x3 conv at 14x14, max-pool, then at 7x7
    a conv and ``config.edge_blocks`` residual convs; a 1x1 conv squeezes to 16 channels and
    a small dense layer reads the flattened 7x7x16 map. That head keeps *where* a feature
    is (collar, sleeve, heel), which global average pooling throws away: on the validation
    split it beat a GAP head of the same budget (94.15% vs 93.72% after 36-38 epochs).
    Batch norm follows every conv and the dense layer and is folded into them by both
    converters. Plain convs, not depthwise-separable ones: on this 2-core CPU a depthwise
    net trained 2-5x slower per step (TensorFlow's CPU depthwise gradients; Keras' JAX
    backend was slower still), and at 28x28 its extra operators made the int8 file no
    faster than a plain net with more multiply-accumulates. Widths come from
    ``config.edge_widths`` (stem, 14x14 and 7x7 stages) and the head from
    ``config.dense_units``.
    """
    stem, middle, last = config.edge_widths
    inputs = keras.Input(shape=contract.shape, dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    if config.edge_stem == "stride2":
        x = _conv_bn(x, stem, "stem", strides=2, kernel=5)
    else:
        x = _conv_bn(x, stem, "stem")
        x = keras.layers.MaxPooling2D(2, name="pool28")(x)
    x = _conv_bn(x, middle, "conv14")
    x = keras.layers.MaxPooling2D(2, name="pool14")(x)
    x = _conv_bn(x, last, "conv7")
    for block in range(config.edge_blocks):
        x = _residual(x, "block7" if block == 0 else f"block7_{block + 1}")
    x = _conv_bn(x, EDGE_SQUEEZE, "squeeze", kernel=1)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(config.dense_units, use_bias=False, name="dense")(x)
    x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.ReLU(name="dense_relu")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(x)
    outputs = keras.layers.Dense(contract.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgekit_{config.architecture.value}")


def build_augmenter(config: TrainConfig) -> keras.Sequential:
    """Training-time augmentation, kept out of the deployed model.

    Empty space is filled with 0, the dataset's background, not reflected garment.
    """
    layers: list[keras.layers.Layer] = []
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=config.seed))
    if config.rotation_factor > 0:
        layers.append(keras.layers.RandomRotation(
            config.rotation_factor, fill_mode="constant", fill_value=0.0, seed=config.seed + 1))
    if config.zoom_factor > 0:
        layers.append(keras.layers.RandomZoom(
            config.zoom_factor, fill_mode="constant", fill_value=0.0, seed=config.seed + 2))
    if config.shift_factor > 0:
        layers.append(keras.layers.RandomTranslation(
            config.shift_factor, config.shift_factor, fill_mode="constant", fill_value=0.0,
            seed=config.seed + 3))
    if config.erasing_factor > 0:
        layers.append(keras.layers.RandomErasing(
            factor=config.erasing_factor, scale=(0.02, 0.2), fill_value=0.0,
            value_range=(0, 255), seed=config.seed + 4))
    return keras.Sequential(layers, name="augmentation")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of Conv2D, DepthwiseConv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, channels = layer.output.shape
            kh, kw = layer.kernel_size
            total += height * width * channels * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            in_channels = layer.input.shape[-1]
            total += height * width * out_channels * kh * kw * in_channels // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input.shape[-1]) * layer.units
    return int(total)
