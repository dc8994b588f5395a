"""``edgekit evaluate``: test-set metrics, classification report and figures (workstation)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as sk_metrics

from edgekit import errors, fileio
from edgekit.device import datasets
from edgekit.workstation import model_data, plots, training

PREDICTION_GRID_SIZE = 32


KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"


def load_keras_model(path: Path) -> Any:
    """Load a model with Keras' own loaders, with one clear error for a bad path or file.

    ``.keras`` (safe mode), a legacy ``.h5``/``.hdf5`` file, or a TensorFlow SavedModel folder
    (also what Keras 3's ``model.export()`` writes): Keras 3 reads the last only through
    ``keras.layers.TFSMLayer``, so it is wrapped as a one-layer functional model over its
    serving signature, which must take one fixed-size image batch.
    """
    import keras

    path = Path(path)
    if path.is_dir():
        return _load_saved_model(path)
    if not path.is_file():
        raise errors.ModelError(f"model file {path} does not exist. Train one with `edgekit train`.")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise errors.ModelError(
            f"{path} is not a Keras model: edgekit reads .keras and .h5 files and SavedModel "
            "folders. Save yours with `model.save('model.keras')` in the framework that trained it.")
    try:
        if path.suffix.lower() != ".keras":
            return keras.models.load_model(path, compile=False)
        if not _wraps_saved_model(path):
            return keras.models.load_model(path, safe_mode=True, compile=False)
        from keras.src.saving import serialization_lib

        # load_model(safe_mode=False) does not reach a TFSMLayer nested in a functional model.
        with serialization_lib.SafeModeScope(False):
            return keras.models.load_model(path, safe_mode=False, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt archive
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise errors.ModelError(
                f"cannot load Keras model {path}: it holds a Lambda layer (Python code), which "
                "Keras loads only with safe mode off, and edgekit does not run code from model "
                "files. Rebuild it with built-in layers (e.g. Rescaling instead of a scaling "
                "Lambda) and save it again.") from error
        if "Could not locate" in str(error) or "Unknown layer" in str(error):
            raise errors.ModelError(
                f"cannot load Keras model {path}: {str(error).splitlines()[0][:200]}. It uses a "
                "custom layer edgekit cannot import; rebuild it with built-in Keras layers.") from error
        raise errors.ModelError(
            f"cannot load Keras model {path}: {str(error).splitlines()[0][:200]}. "
            "The file is corrupt or not a Keras model; load it where it was trained and save it "
            "with `model.save('model.keras')`, or retrain with `edgekit train`."
        ) from error


def _wraps_saved_model(path: Path) -> bool:
    """A release's ``model.keras`` made from a SavedModel folder holds a ``TFSMLayer`` naming
    that folder; safe mode refuses to deserialise it. It loads the SavedModel the user
    exported from (nothing else), so such an archive is read with safe mode off."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"TFSMLayer"' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def _load_saved_model(path: Path) -> Any:
    import keras

    if not (path / SAVED_MODEL_FILE).is_file():
        raise errors.ModelError(
            f"{path} is a folder without {SAVED_MODEL_FILE}, so not a SavedModel; give a .keras "
            "or .h5 file, or the SavedModel folder itself.")
    try:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
        signature = layer.call_endpoint_fn.structured_input_signature
    except Exception as error:
        raise errors.ModelError(
            f"cannot load SavedModel {path}: {str(error).splitlines()[0][:200]}. Load it with "
            "`tf.keras.models.load_model` where it was made and save it as `model.keras`."
        ) from error
    specs = [spec for spec in _flatten(signature) if hasattr(spec, "shape")]
    if len(specs) != 1 or len(specs[0].shape) != 4 or None in tuple(specs[0].shape)[1:]:
        raise errors.ModelError(
            f"SavedModel {path}'s serving signature takes {[tuple(s.shape) for s in specs]}; "
            "edgekit needs one image batch of a fixed size [N, height, width, channels].")
    inputs = keras.Input(shape=tuple(specs[0].shape)[1:], dtype="float32", name="pixels")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise errors.ModelError(
                f"SavedModel {path} returns {len(outputs)} outputs ({', '.join(outputs)}); "
                "edgekit exports classifiers with one class output.")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=path.name)


def _flatten(structure: Any) -> list[Any]:
    if isinstance(structure, dict):
        return [item for value in structure.values() for item in _flatten(value)]
    if isinstance(structure, (list, tuple)):
        return [item for value in structure for item in _flatten(value)]
    return [structure]


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The reference float32 probabilities, by a direct call in batches (no Keras overhead)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        outputs.append(np.asarray(model(batch, training=False), dtype=np.float32))
    return np.concatenate(outputs)


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def evaluate(model_path: Path, output_dir: Path,
             spec: datasets.DataSpec | None = None) -> dict[str, Any]:
    output_dir = fileio.ensure_dir(output_dir)
    model = load_keras_model(model_path)
    dataset = model_data.data_for_model(Path(model_path), model, spec)
    test = dataset.test
    LABELS = dataset.contract.labels  # noqa: N806 - the class names of this dataset
    started = time.perf_counter()
    probabilities = predict_probabilities(model, test.images)
    seconds = time.perf_counter() - started
    predicted = probabilities.argmax(axis=1)
    labels = test.labels.astype(np.int64)
    matrix = sk_metrics.confusion_matrix(labels, predicted, labels=range(len(LABELS)))
    report = sk_metrics.classification_report(labels, predicted, labels=range(len(LABELS)),
                                              target_names=list(LABELS), output_dict=True,
                                              digits=4, zero_division=0)
    report_text = sk_metrics.classification_report(labels, predicted, labels=range(len(LABELS)),
                                                   target_names=list(LABELS), digits=4,
                                                   zero_division=0)
    accuracy = float(sk_metrics.accuracy_score(labels, predicted))
    result: dict[str, Any] = {
        "model": str(model_path),
        "model_sha256": fileio.sha256_of(model_path),
        "test_images": int(len(test)),
        "accuracy": accuracy,
        "loss": cross_entropy(probabilities, labels),
        "correct": int((predicted == labels).sum()),
        "per_class": {
            label: {
                "precision": report[label]["precision"],
                "recall": report[label]["recall"],
                "f1": report[label]["f1-score"],
                "support": int(report[label]["support"]),
            }
            for label in LABELS
        },
        "macro_f1": report["macro avg"]["f1-score"],
        "confusion_matrix": matrix.tolist(),
        "labels": list(LABELS),
        "predict_seconds": round(seconds, 3),
        "dataset": str(dataset.source),
    }
    record = training.load_record(Path(model_path))
    if record is not None:
        result["training"] = {key: record[key] for key in
                              ("parameters", "epochs_run", "best_epoch", "validation_accuracy",
                               "train_seconds") if key in record}
    write_reports(result, report_text, probabilities, test, dataset.train, Path(model_path),
                  output_dir)
    return result


def write_reports(result: dict[str, Any], report_text: str, probabilities: np.ndarray,
                  test: datasets.Split, train: datasets.Split, model_path: Path, output_dir: Path) -> None:
    matrix = np.asarray(result["confusion_matrix"])
    fileio.write_json(output_dir / "confusion_matrix.json",
                      {"labels": result["labels"], "rows": "true", "columns": "predicted",
                       "matrix": matrix.tolist()})
    fileio.write_text(output_dir / "classification_report.txt", report_text)
    plots.confusion_matrix(matrix, result["labels"], output_dir / "confusion_matrix.png",
                           f"confusion matrix, accuracy {result['accuracy']:.2%} on "
                           f"{result['test_images']:,} test images")
    history_path = model_path.parent / training.HISTORY_FILE
    if history_path.is_file():
        epochs = json.loads(history_path.read_text())["epochs"]
        plots.training_curves(epochs, output_dir / "training_curves.png")
        result["figures_training_curves"] = "training_curves.png"
    predicted = probabilities.argmax(axis=1)
    # Show the first images, then make sure some mistakes are visible too.
    wrong = np.flatnonzero(predicted != test.labels)[: PREDICTION_GRID_SIZE // 4]
    first = np.arange(min(len(test), PREDICTION_GRID_SIZE - len(wrong)))
    chosen = np.unique(np.concatenate([first, wrong]))
    plots.prediction_grid(test.images[chosen], test.labels[chosen], predicted[chosen],
                          probabilities[chosen].max(axis=1), result["labels"],
                          output_dir / "predictions.png")
    plots.samples_per_class(train.images, train.labels, result["labels"],
                            output_dir / "samples.png")
    fileio.write_json(output_dir / "metrics.json", result)
