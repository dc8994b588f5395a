"""``edgekit export``: Keras model -> TFLite (fp32, fp16, dynamic, int8) and ONNX (fp32, int8).

Workstation only (TensorFlow, tf2onnx, onnx, onnxruntime.quantization). Every file is
written atomically; the manifest is updated once all requested artifacts exist. Tensor
names, dtypes and quantisation parameters in the manifest are read back through the same
device runtimes that will run the files (``edgekit.device.runtime``), so they describe what a
device sees.

This module is the command: the plan, the staging folder, the reference model and its
outputs, the manifest. The conversions live beside it, TFLite and ONNX apart:
``tflite`` (conversion per precision, metadata) over ``tflite_graph`` (flatbuffer edits),
``onnx`` (tf2onnx, int8 quantisation, metadata) over ``onnx_graph`` (graph folds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, runtime
from edgekit.workstation import models, training
from edgekit.workstation.config import ExportConfig, ExportFormat, Quantization
from edgekit.workstation.export import reference as reference_module
from edgekit.workstation.export.onnx import quantize_onnx, serialized, to_onnx
from edgekit.workstation.export.tflite import to_tflite

REFERENCE_FILE = "model.keras"
REFERENCE_OUTPUTS_FILE = "reference.npz"
GOLDEN_FILE = "golden.npz"
GOLDEN_PER_CLASS = 30
LABELS_FILE = "labels.txt"
PRECISION_NAMES = {Quantization.NONE: "fp32", Quantization.FLOAT16: "fp16",
                   Quantization.DYNAMIC: "dynamic", Quantization.INT8: "int8"}
SUPPORTED = {
    ExportFormat.TFLITE: (Quantization.NONE, Quantization.FLOAT16, Quantization.DYNAMIC,
                          Quantization.INT8),
    ExportFormat.ONNX: (Quantization.NONE, Quantization.INT8),
}


@dataclasses.dataclass(frozen=True)
class Artifact:
    file: str
    format: ExportFormat
    quantization: Quantization
    seconds: float
    bytes: int


def artifact_name(export_format: ExportFormat, quantization: Quantization) -> str:
    return f"model_{PRECISION_NAMES[quantization]}.{export_format.value}"


def plan(config: ExportConfig) -> list[tuple[ExportFormat, Quantization]]:
    """The (format, quantization) pairs a config asks for, rejecting unsupported pairs."""
    formats = [ExportFormat.TFLITE, ExportFormat.ONNX] if config.format == ExportFormat.ALL \
        else [config.format]
    pairs = []
    for export_format in formats:
        wanted = config.quantize or SUPPORTED[export_format]
        for quantization in wanted:
            if quantization not in SUPPORTED[export_format]:
                if config.format == ExportFormat.ALL:
                    continue
                raise errors.ExportError(
                    f"{export_format.value} export does not support --quantize "
                    f"{quantization.value}; choose one of "
                    f"{', '.join(q.value for q in SUPPORTED[export_format])}."
                )
            pairs.append((export_format, quantization))
    if not pairs:
        raise errors.ExportError("nothing to export for that --format/--quantize combination.")
    return pairs


def calibration_images(train: datasets.Split, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of *training* images (never test images) for calibration."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(train), size=min(size, len(train)), replace=False)
    return train.images[np.sort(indices)].astype(np.float32)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence the converters' chatter on stdout and stderr (it is not for users).

    TensorFlow's converters print from Python and log from C++ straight to file
    descriptors 1 and 2, so redirect the descriptors themselves. With EDGEKIT_DEBUG set,
    the captured text is replayed when a conversion fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {descriptor: os.dup(descriptor) for descriptor in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for descriptor in saved:
            os.dup2(sink.fileno(), descriptor)
        failed = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, copy in saved.items():
                os.dup2(copy, descriptor)
                os.close(copy)
            if failed and os.environ.get("EDGEKIT_DEBUG"):
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))


STAGING_PREFIX = ".edgekit-staging-"


def export(model_path: Path, output_dir: Path, config: ExportConfig,
           spec: datasets.DataSpec | None = None, input_range: str | None = None,
           output: str | None = None, echo: Callable[[str], None] = print,
           per_file: dict[str, ExportConfig] | None = None) -> list[Artifact]:
    """Export every requested artifact into ``output_dir`` and update its manifest.

    ``spec`` names the data (default: what the model was trained on); ``input_range`` and
    ``output`` describe a model trained elsewhere (see :mod:`.reference`).
    Everything is first written to a staging folder inside ``output_dir``; only when all
    files exist are they renamed into place, the manifest last. A run killed mid-way
    leaves the previous release as it was (and a staging folder the next run removes).
    ``per_file``: a file's own quantisation levers (``--keep-float auto`` chooses them per
    file: kept layers, equalised pairs, calibration method and size) in place of ``config``'s.
    """
    from edgekit.workstation import evaluation

    started = time.perf_counter()
    pairs = plan(config)
    model = evaluation.load_keras_model(model_path)
    if config.keep_float:
        from edgekit.workstation.quantization import repair

        if not any(q in (Quantization.INT8, Quantization.DYNAMIC) for _, q in pairs):
            raise errors.ExportError("--keep-float changes the int8 and dynamic files; none is "
                                     "exported (add --quantize int8).")
        repair.check_names(model, config.keep_float)
    reference = reference_module.prepare(model, Path(model_path), spec, input_range, output)
    for warning in reference.dataset.warnings:
        echo(f"warning: {warning}")
    if not len(reference.dataset.train) or not len(reference.dataset.test):
        raise errors.DataError("the dataset has no training or no test images to calibrate and "
                               "verify with.")
    output_dir = fileio.ensure_dir(output_dir)
    for stale in output_dir.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    manifest = manifest_module.load_or_empty(output_dir, reference.contract)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        artifacts = _export_into(reference, Path(model_path), output_dir, staging, manifest,
                                 pairs, config, per_file or {}, echo)
        for staged in sorted(staging.iterdir()):
            os.replace(staged, output_dir / staged.name)
        manifest_module.save(output_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if config.explanations:
        # After the release is complete: the maps are read against its manifest and test split.
        from edgekit.workstation import explain_reference

        # Best effort, in at most a third of the export's wall time (half of what it took so far).
        explain_reference.write_best_effort(output_dir, spec, (time.perf_counter() - started) / 2,
                                            echo)
    return artifacts


def _export_into(reference: reference_module.Reference, model_path: Path, output_dir: Path,
                 staging: Path, manifest: dict[str, Any],
                 pairs: list[tuple[ExportFormat, Quantization]], base_config: ExportConfig,
                 per_file: dict[str, ExportConfig], echo: Callable[[str], None]) -> list[Artifact]:
    model, contract = reference.model, reference.contract
    reference_entry = write_reference(reference, model_path, output_dir, staging)
    if (manifest.get("reference") and manifest["reference"].get("sha256") != reference_entry["sha256"]
            or manifest["input"] != contract.to_dict() or manifest["labels"] != list(contract.labels)):
        # A new reference model (or contract) invalidates every artifact measured before.
        manifest["artifacts"] = []
    manifest["schema_version"] = manifest_module.SCHEMA_VERSION
    manifest["reference"] = reference_entry
    manifest["labels"] = list(contract.labels)
    manifest["input"] = contract.to_dict()
    manifest["dataset"] = reference.dataset.record
    fileio.write_text(staging / LABELS_FILE, "\n".join(contract.labels) + "\n")
    artifacts: list[Artifact] = []
    sources: dict[tuple[Any, ...], tuple[Any, float]] = {}
    calibrations: dict[int, np.ndarray] = {}
    onnx_floats: dict[int, Any] = {}
    for export_format, quantization in pairs:
        started = time.perf_counter()
        name = artifact_name(export_format, quantization)
        config = per_file.get(name, base_config)
        levers = (config.equalize, config.keep_float)
        if quantization in QUANTISED and levers not in sources:
            sources[levers] = quantised_source(model, config)
        source, share = sources[levers] if quantization in QUANTISED else (model, 1.0)
        if config.calibration_size not in calibrations:
            calibrations[config.calibration_size] = calibration_images(
                reference.dataset.train, config.calibration_size, config.seed)
        calibration = calibrations[config.calibration_size]
        try:
            with quiet_native_output():
                if export_format == ExportFormat.TFLITE:
                    payload = to_tflite(source, quantization, calibration, contract,
                                        config.keep_float)
                else:
                    if id(source) not in onnx_floats:
                        onnx_floats[id(source)] = to_onnx(source, config.opset, contract)
                    onnx_float = onnx_floats[id(source)]
                    proto = onnx_float if quantization == Quantization.NONE \
                        else quantize_onnx(onnx_float, calibration, config.keep_float,
                                           config.calibration_method)
                    payload = serialized(proto, PRECISION_NAMES[quantization], contract)
        except Exception as error:
            raise conversion_error(error, export_format, quantization) from error
        fileio.write_bytes(staging / name, payload)
        seconds = time.perf_counter() - started
        entry = artifact_entry(staging / name, export_format, quantization, config, seconds,
                               len(calibration))
        if quantization in QUANTISED:
            entry["export"]["int8_macs_share"] = share
        manifest_module.upsert_artifact(manifest, entry)
        artifacts.append(Artifact(name, export_format, quantization, seconds, len(payload)))
        echo(f"exported {output_dir / name} ({fileio.human_size(len(payload))}, {seconds:.1f} s)")
    return artifacts


QUANTISED = (Quantization.INT8, Quantization.DYNAMIC)


def quantised_source(model: Any, config: ExportConfig) -> tuple[Any, float]:
    """The model the int8 and dynamic files are converted from (a copy with ``config.equalize``
    applied, or ``model``) and the share of its MACs left in int8 once ``keep_float`` is kept
    float. The release's reference stays ``model``."""
    from edgekit.workstation.quantization import equalize, keras_side

    share = keras_side.int8_macs_share(keras_side.macs_by_layer(model), config.keep_float)
    if not config.equalize:
        return model, share
    return equalize.equalized_copy(model, config.equalize), share


def conversion_error(error: Exception, export_format: ExportFormat,
                     quantization: Quantization) -> errors.ExportError:
    """One line: which file failed, the converter's own words, and what still exports."""
    name = artifact_name(export_format, quantization)
    if isinstance(error, errors.EdgekitError):
        reason = str(error)
    else:  # a converter's or the model's own exception: its most telling line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        telling = [line for line in lines if "error:" in line.lower() or "not supported" in line]
        reason = f"{name}: {type(error).__name__}: {(telling or lines or [''])[0][:300]}"
    same_format = [other.value for other in SUPPORTED[export_format] if other != quantization]
    hint = (f" The other formats may still convert: --format "
            f"{'onnx' if export_format == ExportFormat.TFLITE else 'tflite'}")
    if same_format:
        hint += f", or --format {export_format.value} --quantize {' --quantize '.join(same_format)}"
    return errors.ExportError(f"{reason.rstrip('.')}.{hint}. Nothing was written "
                              "(EDGEKIT_DEBUG=1 shows the converter's log).")


def artifact_entry(path: Path, export_format: ExportFormat, quantization: Quantization,
                   config: ExportConfig, seconds: float, calibrated: int = 0) -> dict[str, Any]:
    loaded = runtime.load(path, verify_sha256=False)
    settings: dict[str, Any] = {"seconds": round(seconds, 2)}
    if quantization in (Quantization.INT8, Quantization.DYNAMIC):
        settings["keep_float"] = list(config.keep_float)  # Keras layer names left float
        settings["equalized"] = [list(pair) for pair in config.equalize]  # (L1, L2) Keras names
    if quantization == Quantization.INT8:
        settings["calibration_images"] = calibrated  # the number used (capped by the split)
        # TFLite's converter calibrates on each tensor's observed min/max.
        settings["calibration_method"] = config.calibration_method \
            if export_format == ExportFormat.ONNX else "minmax"
        settings["calibration_source"] = "training split, seeded random sample"
        settings["calibration_seed"] = config.seed
    if export_format == ExportFormat.ONNX:
        settings["opset"] = config.opset
    return {
        "file": path.name,
        "format": export_format.value,
        "precision": PRECISION_NAMES[quantization],
        "runtime": "onnxruntime" if export_format == ExportFormat.ONNX else "ai-edge-litert",
        "bytes": path.stat().st_size,
        "sha256": fileio.sha256_of(path),
        **loaded.describe(),
        "export": settings,
        "metrics": None,
    }


def write_reference(reference: reference_module.Reference, model_path: Path, output_dir: Path,
                    staging: Path) -> dict[str, Any]:
    """Stage the Keras model and its test-set probabilities beside the artifacts.

    The stored probabilities let ``edgekit verify`` run without TensorFlow; the golden
    bundle (a stratified few hundred test images) lets it run without the dataset.
    A user's model that needed a wrapper is saved wrapped: that is what the artifacts are.
    """
    from edgekit.workstation import evaluation

    model, test = reference.model, reference.dataset.test
    source_sha256 = fileio.sha256_of(model_path)
    if reference.wrapped or Path(model_path).suffix != ".keras" or Path(model_path).is_dir():
        # Wrapped, or another format (.h5, a SavedModel): the release's reference is .keras.
        with fileio.atomic_path(staging / REFERENCE_FILE) as temporary:
            model.save(temporary)
        model_path = staging / REFERENCE_FILE
    elif Path(model_path).resolve() != (output_dir / REFERENCE_FILE).resolve():
        fileio.copy_file(model_path, staging / REFERENCE_FILE)
    recorded = Path(model_path).parent / training.DATASET_FILE
    if recorded.is_file() and recorded.resolve() != (output_dir / training.DATASET_FILE).resolve():
        fileio.copy_file(recorded, staging / training.DATASET_FILE)
    sha256 = fileio.sha256_of(model_path)
    probabilities = evaluation.predict_probabilities(model, test.images)
    with fileio.atomic_path(staging / REFERENCE_OUTPUTS_FILE) as temporary:
        np.savez_compressed(temporary, probabilities=probabilities, labels=test.labels,
                            model_sha256=np.array(sha256))
    golden = golden_indices(test.labels, reference.contract.num_classes)
    with fileio.atomic_path(staging / GOLDEN_FILE) as temporary:
        np.savez_compressed(temporary, indices=golden, images=test.images[golden],
                            labels=test.labels[golden], probabilities=probabilities[golden],
                            model_sha256=np.array(sha256))
    record = training.load_record(Path(model_path)) or {}
    return {
        "file": REFERENCE_FILE,
        "format": "keras",
        "bytes": Path(model_path).stat().st_size,
        "sha256": sha256,
        "parameters": int(model.count_params()),
        "macs_per_image": models.count_macs(model),
        "architecture": record.get("config", {}).get("architecture", "unknown"),
        "training": {key: record[key] for key in
                     ("config", "epochs_run", "best_epoch", "validation_accuracy", "weights",
                      "train_seconds", "environment") if key in record},
        "test_accuracy": float((probabilities.argmax(1) == test.labels).mean()),
        "outputs_file": REFERENCE_OUTPUTS_FILE,
        "outputs_sha256": fileio.sha256_of(staging / REFERENCE_OUTPUTS_FILE),
        "golden_file": GOLDEN_FILE,
        "golden_sha256": fileio.sha256_of(staging / GOLDEN_FILE),
        "golden_images": int(len(golden)),
        "source_sha256": source_sha256,
        **reference.record(),
    }


def golden_indices(labels: np.ndarray, classes: int) -> np.ndarray:
    """The first GOLDEN_PER_CLASS test images of each class, in test-set order."""
    chosen = [np.flatnonzero(labels == label)[:GOLDEN_PER_CLASS] for label in range(classes)]
    return np.sort(np.concatenate(chosen))
