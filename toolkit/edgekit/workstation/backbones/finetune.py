"""A Keras Applications backbone with edgekit's input and head, and its two training phases.

The model is one flat graph (Grad-CAM and the converters see the backbone's own layers):

    pixels 0..255 [H, W, 1|3] -> Resizing (only if smaller than the family accepts)
      -> preprocess (fixed 1x1 conv: the family's mode, grey to RGB) -> backbone
      -> global average pooling -> dropout -> softmax

Small images (Fashion-MNIST's 28x28) are upscaled by a ``Resizing`` layer inside the graph,
not by the dataset pipeline: the input contract stays the dataset's own (28x28 grey, prepared
as always), so every device-side command feeds the exported files exactly as before and no
device has to know about the upscale.

Phase 1 trains the head on a frozen backbone; phase 2 also unfreezes the family's top blocks
(``registry.Family.top_block`` onward) at ``fine_tune_learning_rate``. Batch normalisation
layers stay frozen in both — a frozen Keras 3 BatchNormalization runs in inference mode — as
keras-io's transfer-learning guide advises, so a few hundred images do not wreck the
pretrained statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.workstation import checkpoints, distribute, training
from edgekit.workstation.backbones import preprocessing, registry
from edgekit.workstation.config import TrainConfig

HEAD_LAYERS = ("pixels", "resize", preprocessing.LAYER_NAME, "pooling", "dropout", "probabilities")


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str  # "head" or "fine-tune"
    first_epoch: int  # 0-based, inclusive
    last_epoch: int  # exclusive
    learning_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.name, "epochs": [self.first_epoch + 1, self.last_epoch],
                "learning_rate": self.learning_rate}


def phases(config: TrainConfig) -> list[Phase]:
    """The head phase, then (if any epochs are left) the fine-tuning phase."""
    head = Phase("head", 0, config.head_epochs, config.learning_rate)
    if config.head_epochs >= config.epochs:
        return [head]
    return [head, Phase("fine-tune", config.head_epochs, config.epochs,
                        config.fine_tune_learning_rate)]


def backbone_size(family: registry.Family, contract: InputContract) -> tuple[int, int]:
    """The backbone's input size: the contract's, raised to the family's smallest side."""
    return (max(contract.height, family.default_size), max(contract.width, family.default_size))


def _constructor(family: registry.Family) -> Any:
    return getattr(keras.applications, family.constructor)


def _source_backbone(family: registry.Family, size: tuple[int, int], weights: str) -> keras.Model:
    """The family's backbone alone, holding the weights ``weights`` names."""
    registry.check_weights(weights)
    arguments = dict(family.arguments)
    shape = (*size, 3)
    if weights != "imagenet":
        backbone = _constructor(family)(input_shape=shape, include_top=False, weights=None,
                                        **arguments)
        if weights != "none":
            try:
                backbone.load_weights(weights)
            except Exception as error:  # noqa: BLE001 - h5py, ValueError, OSError: all one message
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise errors.ModelError(
                    f"--weights {weights} does not fit {family.name} at {size[0]}x{size[1]}x3 "
                    f"({reason}). Save it from keras.applications.{family.constructor}"
                    f"(input_shape={shape}, include_top=False, weights=None"
                    + "".join(f", {key}={value}" for key, value in arguments.items())
                    + ").save_weights('x.weights.h5').") from None
        return backbone
    try:
        return _constructor(family)(input_shape=shape, include_top=False, weights="imagenet",
                                    **arguments)
    except Exception as error:  # noqa: BLE001 - Keras' download raises plain Exception
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise errors.ModelError(
            f"could not get the ImageNet weights of {family.name} ({reason}); without internet "
            "pass --weights PATH (a weights file saved from this family) or --weights none.") from None


def build(config: TrainConfig, contract: InputContract) -> keras.Model:
    """The fine-tuning model, its backbone frozen (phase 1), holding ``config.weights``."""
    family = registry.family(config.architecture.value)
    size = backbone_size(family, contract)
    source = _source_backbone(family, size, config.weights)
    inputs = keras.Input(shape=contract.shape, dtype="float32", name="pixels")
    x = inputs
    if size != (contract.height, contract.width):
        x = keras.layers.Resizing(*size, interpolation="bilinear", name="resize")(x)
    fixed = preprocessing.layer(family.preprocessing, contract.channels)
    if fixed is not None:
        x = fixed(x)
    backbone = _constructor(family)(input_tensor=x, include_top=False, weights=None,
                                    **dict(family.arguments))
    x = keras.layers.GlobalAveragePooling2D(name="pooling")(backbone.output)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(x)
    outputs = keras.layers.Dense(contract.num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"edgekit_{family.name}")
    _copy_weights(source, backbone_layers(model))
    set_phase(model, family, "head")
    return model


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's backbone layers, in order (everything but edgekit's input and head)."""
    return [layer for layer in model.layers
            if layer.name not in HEAD_LAYERS and not isinstance(layer, keras.layers.InputLayer)]


def _copy_weights(source: keras.Model, layers: list[keras.layers.Layer]) -> None:
    """The source backbone's weights into the same constructor's layers, layer by layer.

    Keras builds EfficientNet (V1) with one more layer when ``weights="imagenet"``: a
    ``Rescaling`` by ``1/sqrt(stddev)`` after its ``Normalization`` (keras-team/keras, the
    comment at efficientnet.py's stem). The model here is built with ``weights=None``, so that
    division is folded into the copied normalisation's variance — the same arithmetic.
    """
    sources = [layer for layer in source.layers if layer.weights]
    targets = [layer for layer in layers if layer.weights]
    kinds = [type(layer).__name__ for layer in sources]
    if kinds != [type(layer).__name__ for layer in targets]:
        raise errors.ModelError(f"internal: the backbone built twice differs ({len(sources)} "
                                f"and {len(targets)} layers with weights)")
    for origin, target in zip(sources, targets, strict=True):
        target.set_weights(origin.get_weights())
        if isinstance(target, keras.layers.Normalization):
            target.finalize_state()  # it reads its mean and variance from here
    scalings = [layer for layer in source.layers if isinstance(layer, keras.layers.Rescaling)]
    present = sum(isinstance(layer, keras.layers.Rescaling) for layer in layers)
    normalizations = [layer for layer in targets if isinstance(layer, keras.layers.Normalization)]
    for extra in scalings[present:]:
        if len(normalizations) != 1:
            raise errors.ModelError("internal: an extra Rescaling with nothing to fold it into")
        scale = np.asarray(extra.scale, dtype=np.float32)
        normalization = normalizations[0]
        normalization.adapt_variance.assign(np.asarray(normalization.adapt_variance) / scale ** 2)
        normalization.finalize_state()


def set_phase(model: keras.Model, family: registry.Family, phase: str) -> list[str]:
    """Freeze or unfreeze for ``phase``; returns the names of the backbone layers it trains.

    head: the whole backbone frozen. fine-tune: the top blocks trainable, from the first layer
    named ``family.top_block...`` on, batch normalisation excepted (kept in inference mode).
    """
    layers = backbone_layers(model)
    starts = [index for index, layer in enumerate(layers) if layer.name.startswith(family.top_block)]
    if not starts:
        raise errors.ModelError(f"internal: {family.name} has no layer named {family.top_block}*")
    trained = []
    for index, layer in enumerate(layers):
        trainable = (phase == "fine-tune" and index >= starts[0]
                     and not isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = trainable
        if trainable and layer.weights:
            trained.append(layer.name)
    return trained


def describe(config: TrainConfig, contract: InputContract) -> dict[str, Any]:
    """The record of what was fine-tuned (train_config.json's "backbone")."""
    family = registry.family(config.architecture.value)
    size = backbone_size(family, contract)
    weights: dict[str, Any] = {"source": config.weights}
    if config.weights not in ("imagenet", "none"):
        weights["sha256"] = hashlib.sha256(Path(config.weights).read_bytes()).hexdigest()
    return {"family": family.name, "constructor": f"keras.applications.{family.constructor}",
            "arguments": dict(family.arguments), "preprocessing": family.preprocessing,
            "input_size": list(size), "upscaled_in_graph": size != (contract.height, contract.width),
            "top_block": family.top_block, "weights": weights,
            "phases": [phase.to_dict() for phase in phases(config)]}


def run_phases(loop: distribute.Loop, train_data: Any, validation_data: Any,
               callbacks: list[keras.callbacks.Callback], initial_epoch: int, epochs: int,
               steps: int, verbose: int) -> None:
    """The two phases on ``loop``'s model (built by :func:`build`), as ``distribute.run_epochs``.

    ``callbacks`` are the training run's, its checkpoint callback last. The fine-tuning phase
    gets a new optimizer at its lower learning rate (its variables are the newly trainable
    ones), so a loop of its own. Each phase ends on its best epoch (the plateau schedule's
    early-stopping callback restores it); if no fine-tuning epoch beat the head phase's best
    on validation, the run keeps that one (its checkpoint). The model, not the loop, carries
    the result: ``loop`` still evaluates it.
    """
    model, distribution = loop.model, loop.distribution
    checkpoint = callbacks[-1]
    config: TrainConfig = checkpoint.config
    if initial_epoch or distribution.cluster is not None:
        raise errors.EdgekitError("fine-tuning a backbone runs without --resume and --strategy "
                                  "multi-worker; start it again without them.")
    family = registry.family(config.architecture.value)
    best_before = -np.inf
    for phase in phases(config):
        if phase.name == "fine-tune":
            best_before = checkpoint.best
            trained = set_phase(model, family, phase.name)
            with distribution.strategy.scope():
                training.compile_model(
                    model, dataclasses.replace(config, learning_rate=phase.learning_rate), steps)
            loop = distribute.Loop(distribution, model, config.label_smoothing, config.batch_size)
            if distribution.is_chief:
                print(f"fine-tuning {len(trained)} layers of the top blocks ({family.top_block}* "
                      f"on, batch norm frozen) at learning rate {phase.learning_rate:g}",
                      flush=True)
        distribute.run_epochs(loop, train_data, validation_data, callbacks, phase.first_epoch,
                              phase.last_epoch, steps, verbose)
    best_file = checkpoint.folder / checkpoints.BEST_FILE
    if config.schedule == "plateau" and best_before >= checkpoint.best and best_file.is_file():
        model.set_weights(keras.models.load_model(best_file, compile=False).get_weights())
