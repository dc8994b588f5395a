"""The Keras model's explanations of a release's sample, stored so verify needs no TensorFlow.

:func:`write_reference_maps` draws the fixed, seeded sample of test images, makes the Keras
model's occlusion maps (the same code the device runs) and Grad-CAM maps, runs the sanity
checks of Adebayo et al. ("Sanity Checks for Saliency Maps", 2018) and writes
``explain_reference.npz`` into the release, recorded with its sha256 in the manifest's
``reference`` entry. The exporter calls it after writing the reference outputs; ``edgekit
explain FOLDER --write-reference`` runs it on an existing release.
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


def keras_predict(model: keras.Model) -> occlusion.Predict:
    """The Keras model's forward pass on raw uint8 pixels, as occlusion maps need it."""
    return lambda pixels: evaluation.predict_probabilities(model, pixels, KERAS_BATCH)


@dataclasses.dataclass(frozen=True)
class KerasExplainer:
    """The Keras model as ``edgekit explain`` uses it: occlusion subject and Grad-CAM."""

    subject: session.Subject
    gradcam: session.GradCam | None  # None: the model has no convolution
    title: str
    note: str | None


def keras_explainer(model_path: Path, contract: InputContract,
                    layer: str | None = None) -> KerasExplainer:
    """Load the Keras model, check it takes the contract's input, find Grad-CAM's layer."""
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
                              "Grad-CAM is left out; its occlusion map is still made.")
    return KerasExplainer(
        subject, lambda pixels, classes: gradcam.gradcam(model, pixels, classes, chosen),
        f"Grad-CAM ({chosen.name})", None)


def randomised_copy(model: keras.Model, seed: int = 0) -> keras.Model:
    """The same architecture with freshly initialised weights (Adebayo et al.'s model
    randomisation test)."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    return copy


def better_than_chance(maps: np.ndarray, reference: np.ndarray,
                       mask: np.ndarray) -> dict[str, Any]:
    """Does each image's map agree with its own reference map more than with another image's?

    Per measure, passes when the mean paired difference exceeds two standard errors.
    """
    matched = compare.agreement(maps, reference, mask)
    shuffled = compare.shuffled_agreement(maps, reference, mask)
    result: dict[str, Any] = {}
    for name in ("rank_correlation", "top_overlap"):
        ours, chance = getattr(matched, name), getattr(shuffled, name)
        difference = ours - chance
        error = float(difference.std(ddof=1) / np.sqrt(len(difference)))
        result[name] = {"value": round(float(ours.mean()), 4),
                        "chance": round(float(chance.mean()), 4),
                        "passed": bool(difference.mean() > 2 * error)}
    result["passed"] = all(check["passed"] for check in result.values())
    return result


def randomisation_check(randomised: keras.Model, images: np.ndarray, classes: np.ndarray,
                        maps: np.ndarray, cams: np.ndarray | None, background: int,
                        settings: occlusion.Settings, layer_name: str | None) -> dict[str, Any]:
    """How alike the ``randomised`` model's maps are to the trained model's ``maps`` and
    ``cams`` of the same images and classes (low: the maps depend on what was learnt)."""
    mask = occlusion.support(images, background, settings)
    random_maps = occlusion.occlusion_maps(keras_predict(randomised), images, background,
                                           settings, classes).maps
    values = {"occlusion_rank_correlation": compare.agreement(random_maps, maps,
                                                              mask).mean_rank_correlation}
    if cams is not None:
        layer = randomised.get_layer(layer_name) if layer_name else None
        random_cams = gradcam.gradcam(randomised, images, classes, layer)
        values["gradcam_rank_correlation"] = compare.agreement(random_cams, cams,
                                                               mask).mean_rank_correlation
    result: dict[str, Any] = {
        name: {"value": round(value, 4), "below": RANDOMISED_MAX_RANK_CORRELATION,
               "passed": bool(value < RANDOMISED_MAX_RANK_CORRELATION)}
        for name, value in values.items()}
    result["passed"] = all(check["passed"] for check in result.values())
    return result


def write_reference_maps(release_folder: str | Path, keras_model_path: str | Path | None = None,
                         sample_size: int = explanation_parity.DEFAULT_SAMPLE,
                         seed: int = explanation_parity.DEFAULT_SEED, patch: int | None = None,
                         stride: int | None = None, layer: str | None = None,
                         spec: datasets.DataSpec | None = None,
                         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Make and store the Keras model's maps of the release's sample; returns the manifest's
    new ``reference["explanations"]`` record. ``keras_model_path`` defaults to the release's
    reference model and must be the model the manifest records (same sha256)."""
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
    chosen_layer = gradcam.find_layer(model, layer)
    test = verify.release_test_split(manifest, contract, spec)
    indices = explanation_parity.sample_indices(len(test), sample_size, seed)
    images = test.images[indices]
    made = occlusion.occlusion_maps(keras_predict(model), images, contract.background, settings)
    cams = None if chosen_layer is None else gradcam.gradcam(model, images, made.classes,
                                                             chosen_layer)
    stored = explanation_parity.ReferenceMaps(indices, test.labels[indices].astype(np.int64),
                                              made.classes, made.probabilities, made.maps, cams,
                                              settings, seed)
    sanity = sanity_checks(model, stored, images, contract.background,
                           None if chosen_layer is None else chosen_layer.name)
    target = folder / explanation_parity.REFERENCE_FILE
    with fileio.atomic_path(target) as temporary:
        np.savez_compressed(temporary, **stored.arrays())  # type: ignore[arg-type]
    record = {"images": int(len(indices)), "seed": seed, **settings.to_dict(),
              "model_sha256": fileio.sha256_of(model_path),
              "class": "the Keras model's predicted class",
              "gradcam_layer": None if chosen_layer is None else chosen_layer.name,
              "sanity": sanity, "seconds": round(time.perf_counter() - started, 1)}
    manifest = manifest_module.load(folder)  # re-read: only the reference entry changes
    manifest["reference"] = {**(manifest.get("reference") or {}),
                             "explanations_file": target.name,
                             "explanations_sha256": fileio.sha256_of(target),
                             "explanations": record}
    manifest_module.save(folder, manifest)
    echo(f"wrote {target} ({fileio.human_size(target.stat().st_size)}): the Keras model's maps "
         f"of {len(indices)} test images ({record['seconds']:.1f} s)")
    return record


def sanity_checks(model: keras.Model, stored: explanation_parity.ReferenceMaps,
                  images: np.ndarray, background: int, layer_name: str | None) -> dict[str, Any]:
    """Both checks, as numbers with a pass flag each (recorded, never hidden)."""
    mask = occlusion.support(images, background, stored.settings)
    checks: dict[str, Any] = {"randomised_weights": randomisation_check(
        randomised_copy(model), images, stored.classes, stored.maps, stored.gradcam,
        background, stored.settings, layer_name)}
    if stored.gradcam is not None:
        checks["gradcam_vs_occlusion"] = better_than_chance(stored.gradcam, stored.maps, mask)
    return checks
