"""``edgekit verify RELEASE --layers``: where each quantised artifact's error enters, per layer.

On a seeded sample of the release's *validation* images (the split its manifest records,
replayed as training made it; never the test split), the float Keras model's output at every
layer is compared with each quantised artifact's own intermediate tensor for that layer
(``diagnose_tflite``, ``diagnose_onnx``); ``measures`` holds the arithmetic and the ranking.
A file whose manifest entry lists equalised pairs is compared with the equalised copy it was
converted from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets
from edgekit.workstation.quantization import diagnose_onnx, diagnose_tflite, keras_side, measures

QUANTISED = ("int8", "dynamic")
DEFAULT_IMAGES = 300
REPORT_FILE = "layers.json"
PLOT_FILE = "layers.png"


@dataclasses.dataclass
class Diagnosis:
    file: str
    precision: str
    order: list[str]  # measured layers, in network order
    ranked: list[measures.LayerError]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "precision": self.precision, "order": self.order,
                "ranked": [error.to_dict() for error in self.ranked]}


def validation_split(folder: Path, manifest: dict[str, Any],
                     spec: datasets.DataSpec | None) -> datasets.Split:
    """The release's validation images: its recorded split, replayed as training carved it."""
    return release_splits(folder, manifest, spec)[1]


def release_splits(folder: Path, manifest: dict[str, Any], spec: datasets.DataSpec | None
                   ) -> tuple[datasets.Split, datasets.Split]:
    """The release's training images (as export calibrates on them) and validation images."""
    from edgekit.workstation import fashion_download, training
    from edgekit.workstation.config import TrainConfig

    contract = manifest_module.contract_of(manifest, folder)
    record = manifest.get("dataset") or {"kind": datasets.FASHION_MNIST_NAME}
    trained = ((manifest.get("reference") or {}).get("training") or {}).get("config") or {}
    config = TrainConfig.from_dict(trained) if trained else TrainConfig()
    if record.get("kind") == "folder":
        root = spec.data if spec is not None else str(record["root"])
        dataset = datasets.open_dataset(
            root, record=record, contract=contract, splits=("train", "validation"),
            skip_bad=spec.skip_bad_images if spec is not None else False)
    else:
        data = spec.data if spec is not None else None
        dataset = datasets.open_dataset(None if data in (None, datasets.FASHION_MNIST_NAME)
                                        else data, download=fashion_download.download)
    return dataset.train, training.train_and_validation(dataset, config)[1]


def sample(split: datasets.Split, count: int, seed: int = 0) -> np.ndarray:
    chosen = np.random.default_rng(seed).permutation(len(split))[:count]
    return split.images[np.sort(chosen)].astype(np.float32)


def diagnose_artifact(model: Any, floats: dict[str, np.ndarray], path: Path,
                      images: np.ndarray) -> tuple[list[str], list[measures.LayerError]]:
    """Every measured layer's error in one artifact: (network order, ranked worst first)."""
    layers = keras_side.layers_in_order(model)
    order = {layer.name: index for index, layer in enumerate(layers)}
    last = layers[-1].name
    collect = diagnose_onnx.tensors_by_layer if path.suffix == ".onnx" \
        else diagnose_tflite.tensors_by_layer
    candidates = collect(path, images, order, last)
    found = []
    for layer in layers:
        chosen = measures.best_candidate(floats[layer.name], candidates.get(layer.name, []))
        if chosen is not None:
            name, values, quantised = chosen
            found.append(measures.layer_error(layer.name, name, floats[layer.name], values,
                                              quantised))
    if not found:
        raise errors.ModelError(f"{path.name}: no tensor could be matched to a Keras layer name.")
    parents = keras_side.parent_map(model)
    in_order = [error.layer for error in found]
    return in_order, measures.rank(found, parents, [layer.name for layer in layers])


def diagnose_release(folder: Path, spec: datasets.DataSpec | None = None,
                     count: int = DEFAULT_IMAGES, write: bool = True,
                     echo: Callable[[str], None] = print) -> list[Diagnosis]:
    from edgekit.workstation import evaluation

    folder = Path(folder)
    manifest = manifest_module.load(folder)
    reference = manifest.get("reference") or {}
    model = evaluation.load_keras_model(manifest_module.safe_file(
        folder, reference.get("file", "model.keras")))
    entries = [entry for entry in manifest["artifacts"] if entry["precision"] in QUANTISED]
    if not entries:
        raise errors.ManifestError(f"{folder}/manifest.json lists no quantised artifact "
                                   "(int8 or dynamic) to diagnose.")
    images = sample(validation_split(folder, manifest, spec), count)
    echo(f"diagnosing {len(entries)} quantised artifact(s) layer by layer on {len(images)} "
         "validation images")
    # A file converted from an equalised copy holds that copy's intermediate tensors (channels
    # rescaled between the pairs); its outputs are the model's.
    sources: dict[tuple[tuple[str, str], ...], tuple[Any, dict[str, np.ndarray]]] = {}
    results = []
    for entry in entries:
        pairs = tuple((str(a), str(b)) for a, b in (entry.get("export") or {}).get("equalized", []))
        if pairs not in sources:
            from edgekit.workstation.quantization import equalize

            source = equalize.equalized_copy(model, pairs) if pairs else model
            sources[pairs] = (source, keras_side.intermediate_outputs(source, images))
        source, floats = sources[pairs]
        order, ranked = diagnose_artifact(source, floats, manifest_module.safe_file(
            folder, entry["file"]), images)
        results.append(Diagnosis(entry["file"], entry["precision"], order, ranked))
    if write:
        from edgekit.workstation.quantization import report

        reports = fileio.ensure_dir(folder / "reports")
        fileio.write_json(reports / REPORT_FILE, {
            "split": "validation", "images": int(len(images)), "sample_seed": 0,
            "score": "max(introduced, local) mean per-channel noise-to-signal ratio",
            "artifacts": [result.to_dict() for result in results]})
        report.plot(results, reports / PLOT_FILE)
    return results
