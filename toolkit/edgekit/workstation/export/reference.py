"""The reference model of a release: an edgekit-trained model, or a user's own Keras model.

Every artifact takes raw uint8 pixels and returns probabilities. A model trained by edgekit
already does (``Rescaling`` inside, softmax at the end). A classifier trained elsewhere may
expect 0..1 or -1..1 input, or end in logits: it is wrapped once here — a ``Rescaling`` in
front, a ``Softmax`` behind — and the wrapped model is the release's ``model.keras``, the
reference every artifact is measured against. What was added is recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import datasets
from edgekit.workstation import model_data, preprocessing, training

OUTPUTS = ("probabilities", "logits")
WRAPPED_PREFIX = "edgekit_wrapped_"
SCALING_LAYERS = ("Rescaling", "Normalization")


@dataclasses.dataclass(frozen=True)
class Reference:
    model: Any  # takes raw 0..255 float32 pixels, returns probabilities
    contract: InputContract
    dataset: datasets.Dataset
    input_range: str  # what the original model expected
    output: str  # what the original model returned
    wrapped: bool  # a Rescaling and/or Softmax was added around the original

    def record(self) -> dict[str, Any]:
        return {"input_range": self.input_range, "output": self.output, "wrapped": self.wrapped}


def check_classifier(model: Any, path: Path) -> tuple[tuple[int | None, int | None, int], int]:
    """One NHWC image input of known size, one [N, classes] output — else one clear error."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise errors.ModelError(
            f"{path} has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); edgekit "
            "exports image classifiers with one image input and one class output.")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise errors.ModelError(
            f"{path} takes input of shape {[None, *shape]}; edgekit exports image classifiers "
            "taking [N, height, width, 1 or 3] (NHWC; a height and width of None take the "
            "dataset's size).")
    output = tuple(model.outputs[0].shape[1:])
    if len(output) != 1 or output[0] is None or output[0] < 2:
        raise errors.ModelError(
            f"{path} outputs shape {[None, *output]}, not [N, classes]: it is not a classifier.")
    return (shape[0], shape[1], int(shape[2])), int(output[0])


def _first_layer_scales(model: Any) -> bool:
    """The graph starts with a Rescaling or Normalization (looking into a nested model that
    comes first, as a Keras Applications backbone built with include_preprocessing does)."""
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    if not layers:
        return False
    first = layers[0]
    return type(first).__name__ in SCALING_LAYERS or (
        hasattr(first, "layers") and _first_layer_scales(first))


def _model_names(model: Any) -> list[str]:
    """The model's name and its nested models' names, outermost first."""
    names = [str(model.name)]
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers"):
            names.extend(_model_names(layer))
    return names


def _ask_for_input_range(model: Any, model_path: Path) -> errors.ModelError:
    hint = ""
    family = preprocessing.family_input_range(_model_names(model))
    if family is not None:
        name, expected = family
        hint = (f" It looks like a Keras Applications {name} model, whose preprocess_input "
                f"expects --input-range {expected or '0-255'}"
                + (" (its preprocessing is inside the model)." if expected is None else "."))
    return errors.ModelError(
        f"{model_path} has no leading Rescaling or Normalization layer, so edgekit cannot tell "
        f"what pixel range it expects: pass --input-range {'|'.join(preprocessing.INPUT_RANGES)} "
        f"(caffe and torch as keras.applications define them).{hint}")


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"


def _returns_probabilities(model: Any, images: Any, input_range: str) -> bool:
    """Whether outputs on a few real images are rows of probabilities (for a model whose last
    layer does not say, e.g. a SavedModel's serving function)."""
    import numpy as np

    x = np.asarray(images, np.float32)
    for layer in preprocessing.preprocessing_layers(input_range, x.shape[-1]):
        x = np.asarray(layer(x))
    outputs = np.asarray(model(x, training=False), np.float64)
    return bool(len(outputs)) and bool(np.all(outputs >= 0) and np.all(outputs <= 1)
                                       and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))


def prepare(model: Any, model_path: Path, spec: datasets.DataSpec | None,
            input_range: str | None, output: str | None) -> Reference:
    """The reference model, its contract and dataset for ``edgekit export``."""
    import keras

    check_classifier(model, model_path)
    record = training.load_record(model_path)
    trained_here = training.contract_of_record(record) is not None or (
        record is not None and _first_layer_scales(model) and _ends_in_softmax(model))
    if str(model.name).startswith(WRAPPED_PREFIX):
        # A release's own model.keras, already wrapped by an earlier export: it takes 0..255
        # and returns probabilities whatever the original needed; wrapping again would scale twice.
        input_range, output = "0-255", "probabilities"
    if input_range is None:
        if trained_here or _first_layer_scales(model):
            input_range = "0-255"
        else:
            raise _ask_for_input_range(model, model_path)
    dataset = model_data.data_for_model(model_path, model, spec)
    if output is None:
        output = "probabilities" if _ends_in_softmax(model) or _returns_probabilities(
            model, dataset.test.images[:16], input_range) else "logits"
    scaling = preprocessing.preprocessing_layers(input_range, dataset.contract.channels)
    any_size = None in tuple(model.inputs[0].shape[1:3])  # fixed here to the dataset's size
    wrapped = bool(scaling) or output == "logits" or any_size
    if wrapped:
        inputs = keras.Input(shape=dataset.contract.shape, dtype="float32", name="pixels")
        x = inputs
        for layer in scaling:
            x = layer(x)
        x = model(x)
        if output == "logits":
            x = keras.layers.Softmax(name="edgekit_softmax")(x)
        model = keras.Model(inputs, x, name=f"{WRAPPED_PREFIX}{model.name}")
    contract = dataclasses.replace(
        dataset.contract,
        scaling="inside the graph" + (f" ({input_range} preprocessing added at export: the model "
                                      f"expected {input_range})" if scaling else ""),
        output="probabilities" + (" (softmax added at export over the model's logits)"
                                  if output == "logits" else ""))
    return Reference(model, contract, dataset, input_range, output, wrapped)
