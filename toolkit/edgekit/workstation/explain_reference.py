"""The Keras model's explanations of a release's sample, stored so verify needs no TensorFlow.

:func:`write_reference_maps` draws the fixed, seeded sample of test images, makes the Keras
model's occlusion maps (the same code the device runs) and its gradient maps (Grad-CAM,
HiResCAM, LayerCAM), runs the weight-randomisation check of Adebayo et al. ("Sanity Checks for
Saliency Maps", 2018) and writes ``explain_reference.npz`` into the release, recorded with its
sha256 in the manifest's ``reference`` entry. The exporter calls :func:`write_best_effort`
after the release is complete, with a time budget (a third of the export's wall time): a model
whose gradient maps cannot be made still gets its occlusion reference, a large model gets a
smaller sample or none, each with a note, never a failed export. ``edgekit explain FOLDER
--write-reference`` runs it on an existing release, without a budget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.contract import InputContract
from edgekit.device import datasets, verify
from edgekit.device.explain import compare, occlusion, session
from edgekit.device.explain import parity as explanation_parity
from edgekit.workstation import evaluation, gradcam

KERAS_BATCH = 1000
# A re-initialised model's maps must correlate less than this with the trained model's.
RANDOMISED_MAX_RANK_CORRELATION = 0.5
MIN_SAMPLE = 20  # under a budget, fewer affordable images than this: no reference, a note
# The least budget: a third of a seconds-long export of a tiny model would not cover Keras'
# own start-up; the budget matters for large models (ResNet50's export takes minutes).
MIN_BUDGET_SECONDS = 10.0
TIMED_IMAGES = 32  # the batch whose forward pass estimates the cost


def keras_predict(model: keras.Model) -> occlusion.Predict:
    """The Keras model's forward pass on raw uint8 pixels, as occlusion maps need it."""
    return lambda pixels: evaluation.predict_probabilities(model, pixels, KERAS_BATCH)


@dataclasses.dataclass(frozen=True)
class KerasExplainer:
    """The Keras model as ``edgekit explain`` uses it: occlusion subject and Grad-CAM."""

    subject: session.Subject
    gradcam: session.GradCam | None  # the gradient map; None: the model has no convolution
    title: str
    note: str | None


def keras_explainer(model_path: Path, contract: InputContract, layer: str | None = None,
                    method: str = gradcam.DEFAULT_METHOD) -> KerasExplainer:
    """Load the Keras model, check it takes the contract's input, find the maps' layer."""
    model = evaluation.load_keras_model(model_path)
    shape = tuple(model.inputs[0].shape[1:])
    classes = model.outputs[0].shape[-1]
    if shape != contract.shape or classes != contract.num_classes:
        raise errors.ModelError(
            f"{model_path} takes {list(shape)} and gives {classes} classes, not "
            f"{list(contract.shape)} and {contract.num_classes} as the release's "
            "contract says; pass the release's own Keras model.")
    chosen = gradcam.find_layer(model, layer)
    subject = session.Subject(model_path.name, keras_predict(model), is_keras=True)
    if chosen is None:
        return KerasExplainer(subject, None, "", f"{model_path.name} has no convolution layer: "
                              f"{gradcam.TITLES[method]} is left out; its occlusion map is "
                              "still made.")
    return KerasExplainer(
        subject, lambda pixels, classes: gradcam.class_maps(model, pixels, classes, chosen,
                                                            method),
        f"{gradcam.TITLES[method]} ({chosen.name})", None)


def randomised_copy(model: keras.Model, seed: int = 0) -> keras.Model:
    """The same architecture with freshly initialised weights (Adebayo et al.'s model
    randomisation test)."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    return copy


def versus_occlusion(cams: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """How each image's gradient map agrees with its own occlusion map, beside chance (another
    image's map). Numbers only: the two methods answer different questions, and which map is
    faithful is measured by deletion and insertion (:mod:`edgekit.device.explain.faithfulness`)."""
    matched = compare.agreement(cams, maps, mask)
    shuffled = compare.shuffled_agreement(cams, maps, mask)
    return {name: {"value": round(float(getattr(matched, name).mean()), 4),
                   "chance": round(float(getattr(shuffled, name).mean()), 4)}
            for name in ("rank_correlation", "top_overlap")}


def randomisation_check(randomised: keras.Model, images: np.ndarray, classes: np.ndarray,
                        maps: np.ndarray, cams: dict[str, np.ndarray], background: int,
                        settings: occlusion.Settings, layer_name: str | None) -> dict[str, Any]:
    """How alike the ``randomised`` model's maps are to the trained model's ``maps`` (occlusion)
    and ``cams`` (by method) of the same images and classes (low: the maps depend on what was
    learnt)."""
    mask = occlusion.support(images, background, settings)
    random_maps = occlusion.occlusion_maps(keras_predict(randomised), images, background,
                                           settings, classes).maps
    values = {"occlusion_rank_correlation": compare.agreement(random_maps, maps,
                                                              mask).mean_rank_correlation}
    layer = gradcam.find_layer(randomised, layer_name) if layer_name else None
    for method, method_maps in cams.items():
        random_cams = gradcam.class_maps(randomised, images, classes, layer, method)
        values[f"{method}_rank_correlation"] = compare.agreement(random_cams, method_maps,
                                                                 mask).mean_rank_correlation
    result: dict[str, Any] = {
        name: {"value": round(value, 4), "below": RANDOMISED_MAX_RANK_CORRELATION,
               "passed": bool(value < RANDOMISED_MAX_RANK_CORRELATION)}
        for name, value in values.items()}
    result["passed"] = all(check["passed"] for check in result.values())
    return result


def gradient_maps(model: keras.Model, images: np.ndarray, classes: np.ndarray,
                  layer: keras.layers.Layer | None,
                  notes: list[str]) -> dict[str, np.ndarray]:
    """Every gradient method's maps; none (and a note) where the model gives no gradient map."""
    if layer is None:
        notes.append("the Keras model has no convolution: the reference holds occlusion maps only")
        return {}
    try:
        return {method: gradcam.class_maps(model, images, classes, layer, method)
                for method in gradcam.METHODS}
    except Exception as error:  # noqa: BLE001 - best effort: any model Keras can run
        notes.append(f"gradient maps could not be made ({type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else ''}); the reference "
                     "holds occlusion maps only")
        return {}


def per_image_seconds(model: keras.Model, images: np.ndarray) -> float:
    """The Keras model's forward pass per image, timed on a batch after a warm-up call; a
    model fast on a small batch is timed again on a batch as large as occlusion sends."""
    seconds = 0.0
    for size in (TIMED_IMAGES, 8 * TIMED_IMAGES):
        batch = np.resize(images, (size, *images.shape[1:]))
        evaluation.predict_probabilities(model, batch, KERAS_BATCH)
        started = time.perf_counter()
        evaluation.predict_probabilities(model, batch, KERAS_BATCH)
        seconds = (time.perf_counter() - started) / size
        if seconds * size > 0.5:
            break
    return seconds


def affordable_sample(model: keras.Model, images: np.ndarray, settings: occlusion.Settings,
                      wanted: int, budget_seconds: float | None) -> tuple[int, dict[str, Any]]:
    """How many images fit the budget: each costs two occlusion maps (trained and randomised
    model: the patch positions + 1 forward passes each) and the gradient maps (about three
    passes per method, twice), estimated from a timed forward pass."""
    if budget_seconds is None:
        return wanted, {}
    budget_seconds = max(budget_seconds, MIN_BUDGET_SECONDS)
    height, width = images.shape[1:3]
    passes = 2 * (len(occlusion.windows(height, width, settings)) + 1) + 6 * len(gradcam.METHODS)
    per_image = per_image_seconds(model, images) * passes
    count = min(wanted, int(budget_seconds // max(per_image, 1e-9)))
    return count, {"budget_seconds": round(budget_seconds, 1),
                   "estimated_seconds_per_image": round(per_image, 4),
                   "estimated_seconds": round(per_image * max(count, 0), 1)}


def write_best_effort(release_folder: str | Path, spec: datasets.DataSpec | None = None,
                      budget_seconds: float | None = None,
                      echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """:func:`write_reference_maps` for the exporter: a failure is one note, never an error
    (the release is complete without the reference; verify --explanations then says so)."""
    try:
        return write_reference_maps(release_folder, spec=spec, budget_seconds=budget_seconds,
                                    echo=echo)
    except Exception as error:  # noqa: BLE001 - the release is already complete
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        echo(f"note: no explanation reference was written ({first}); make it later with "
             f"`edgekit explain {release_folder} --write-reference`")
        return None


def write_reference_maps(release_folder: str | Path, keras_model_path: str | Path | None = None,
                         sample_size: int = explanation_parity.DEFAULT_SAMPLE,
                         seed: int = explanation_parity.DEFAULT_SEED, patch: int | None = None,
                         stride: int | None = None, layer: str | None = None,
                         spec: datasets.DataSpec | None = None,
                         budget_seconds: float | None = None,
                         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Make and store the Keras model's maps of the release's sample; returns the manifest's
    new ``reference["explanations"]`` record. ``keras_model_path`` defaults to the release's
    reference model and must be the model the manifest records (same sha256).
    ``budget_seconds``: the sample shrinks to what fits (estimated), or no maps are made."""
    folder = Path(release_folder)
    started = time.perf_counter()
    manifest = manifest_module.load(folder)
    contract = manifest_module.contract_of(manifest, folder)
    reference = manifest.get("reference") or {}
    model_path = Path(keras_model_path) if keras_model_path is not None else \
        manifest_module.safe_file(folder, reference.get("file", "model.keras"))
    model = evaluation.load_keras_model(model_path)
    if reference.get("sha256") and fileio.sha256_of(model_path) != reference["sha256"]:
        raise errors.ManifestError(f"{model_path} is not the reference model {folder}/manifest.json "
                                   "records (sha256 differs); explain the release's own model.")
    try:
        settings = occlusion.settings_for(contract, patch, stride)
    except ValueError as error:
        raise errors.ModelError(str(error)) from error
    test = verify.release_test_split(manifest, contract, spec)
    notes: list[str] = []
    count, cost = affordable_sample(model, test.images, settings, sample_size, budget_seconds)
    if count < min(MIN_SAMPLE, sample_size):
        note = (f"the explanation reference was skipped: one image's maps take about "
                f"{cost['estimated_seconds_per_image']:.2f} s, and {cost['budget_seconds']:.0f} s (a third "
                "of the export's time) would not cover " f"{MIN_SAMPLE}; make it with `edgekit "
                f"explain {folder} --write-reference`")
        return _record_skipped(folder, {"skipped": note, **cost}, echo)
    if count < sample_size:
        notes.append(f"{count} of {sample_size} images, to stay within "
                     f"{cost['budget_seconds']:.0f} s (a third of the export's time)")
    chosen_layer = _layer_or_note(model, layer, notes)
    indices = explanation_parity.sample_indices(len(test), count, seed)
    images = test.images[indices]
    made = occlusion.occlusion_maps(keras_predict(model), images, contract.background, settings)
    cams = gradient_maps(model, images, made.classes, chosen_layer, notes)
    default = gradcam.DEFAULT_METHOD if gradcam.DEFAULT_METHOD in cams else None
    stored = explanation_parity.ReferenceMaps(
        indices, test.labels[indices].astype(np.int64), made.classes, made.probabilities,
        made.maps, cams, settings, seed, default,
        test.images.mean(axis=0, dtype=np.float64).astype(np.float32))
    sanity, versus = sanity_checks(model, stored, images, contract.background,
                                   None if chosen_layer is None else chosen_layer.name, notes)
    target = folder / explanation_parity.REFERENCE_FILE
    with fileio.atomic_path(target) as temporary:
        np.savez_compressed(temporary, **stored.arrays())  # type: ignore[arg-type]
    record = {"images": int(len(indices)), "seed": seed, **settings.to_dict(),
              "model_sha256": fileio.sha256_of(model_path),
              "class": "the Keras model's predicted class",
              "methods": sorted(cams), "default_method": default,
              "gradcam_layer": None if not cams or chosen_layer is None else chosen_layer.name,
              "sanity": sanity, "versus_occlusion": versus, "notes": notes, **cost,
              "seconds": round(time.perf_counter() - started, 1)}
    _save_record(folder, record, target)
    for note in notes:
        echo(f"note: {note}")
    echo(f"wrote {target} ({fileio.human_size(target.stat().st_size)}): the Keras model's maps "
         f"of {len(indices)} test images ({record['seconds']:.1f} s)")
    return record


def _layer_or_note(model: keras.Model, layer: str | None,
                   notes: list[str]) -> keras.layers.Layer | None:
    """The layer the gradient maps read; an explicitly named bad layer is the user's error."""
    if layer is not None:
        return gradcam.find_layer(model, layer)
    try:
        return gradcam.find_layer(model)
    except Exception as error:  # noqa: BLE001 - best effort: occlusion still works
        notes.append(f"no layer for the gradient maps ({type(error).__name__})")
        return None


def _save_record(folder: Path, record: dict[str, Any], target: Path | None) -> None:
    manifest = manifest_module.load(folder)  # re-read: only the reference entry changes
    entry = {**(manifest.get("reference") or {}), "explanations": record}
    if target is not None:
        entry.update(explanations_file=target.name, explanations_sha256=fileio.sha256_of(target))
    manifest["reference"] = entry
    manifest_module.save(folder, manifest)


def _record_skipped(folder: Path, record: dict[str, Any],
                    echo: Callable[[str], None]) -> dict[str, Any]:
    manifest = manifest_module.load(folder)
    entry = {key: value for key, value in (manifest.get("reference") or {}).items()
             if not key.startswith("explanations")}
    manifest["reference"] = {**entry, "explanations": record}
    manifest_module.save(folder, manifest)
    stale = folder / explanation_parity.REFERENCE_FILE
    if stale.exists():
        stale.unlink()
    echo(f"note: {record['skipped']}")
    return record


def sanity_checks(model: keras.Model, stored: explanation_parity.ReferenceMaps,
                  images: np.ndarray, background: int, layer_name: str | None,
                  notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weight-randomisation check (pass/fail, recorded, never hidden) and each gradient
    map's agreement with occlusion (numbers only)."""
    mask = occlusion.support(images, background, stored.settings)
    try:
        randomised = randomised_copy(model)
        checks: dict[str, Any] = {"randomised_weights": randomisation_check(
            randomised, images, stored.classes, stored.maps, stored.cams, background,
            stored.settings, layer_name)}
    except Exception as error:  # noqa: BLE001 - a model clone_model cannot copy
        notes.append(f"the weight-randomisation check could not run ({type(error).__name__})")
        checks = {}
    versus = {method: versus_occlusion(maps, stored.maps, mask)
              for method, maps in stored.cams.items()}
    return checks, versus
