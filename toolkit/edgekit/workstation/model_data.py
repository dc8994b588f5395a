"""The dataset a trained model is measured on: its run's recorded split, or ``--data``
prepared to the model's own input (evaluate, export)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgekit import contract as contract_module
from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import datasets
from edgekit.workstation import fashion_download

DATASET_FILE = "dataset.json"  # the data spec, contract and split (file lists) of a run


def data_for_model(model_path: Path, model: Any, spec: datasets.DataSpec | None,
                   splits: tuple[str, ...] = ("train", "validation", "test")) -> datasets.Dataset:
    """The dataset a model is measured on, prepared to the model's own input.

    A model trained by edgekit has its run's dataset.json beside it: without ``--data`` (or
    with the same folder) the recorded split is replayed, so test images stay test images.
    Otherwise ``spec`` names the data, prepared at the model's input size and channels.
    """
    recorded_path = Path(model_path).parent / DATASET_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if recorded is not None and (spec is None or _same_data(spec, recorded)):
        recorded_spec = datasets.DataSpec(**{**recorded["spec"], "image_size": None})
        contract = InputContract.from_dict(recorded["contract"], recorded["labels"])
        return recorded_spec.open(download=fashion_download.download, record=recorded,
                                  contract=contract, splits=splits)
    spec = spec or datasets.DataSpec()
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise errors.ModelError(f"{model_path} takes input of shape {list(shape)}; edgekit works "
                                "with image classifiers taking [N, height, width, 1 or 3].")
    classes = int(model.outputs[0].shape[-1])
    if None in shape and not spec.is_fashion_mnist:
        # Any size: the folder's own (or --image-size), in the model's colour.
        color = "grayscale" if shape[-1] == 1 else "rgb"
        dataset = dataclasses.replace(spec, color_mode=color).open(
            download=fashion_download.download, splits=splits)
        if dataset.contract.num_classes != classes:
            raise errors.DataError(
                f"the model has {classes} outputs but {spec.data} has "
                f"{dataset.contract.num_classes} classes; use the dataset the model was trained on.")
        return dataset
    if None in shape:
        shape = (28, 28, shape[-1])
    contract = (datasets.FASHION_MNIST if spec.is_fashion_mnist else InputContract(
        height=int(shape[0]), width=int(shape[1]), channels=int(shape[2]),
        labels=contract_module.placeholder_labels(classes),
        preparation=contract_module.default_preparation(int(shape[2]))))
    if spec.is_fashion_mnist and (shape != contract.shape or classes != contract.num_classes):
        raise errors.DataError(
            f"{model_path} takes {list(shape)} images into {classes} classes, not Fashion-MNIST's "
            "28x28x1 into 10: pass its own dataset with --data DIR.")
    return spec.open(download=fashion_download.download, contract=contract, splits=splits)


def _same_data(spec: datasets.DataSpec, recorded: dict[str, Any]) -> bool:
    if spec.is_fashion_mnist:
        return recorded.get("kind") == datasets.FASHION_MNIST_NAME or spec.data == "fashion-mnist"
    return Path(spec.data).resolve() == Path(str(recorded.get("root", ""))).resolve()
