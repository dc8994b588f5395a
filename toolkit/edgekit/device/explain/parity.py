"""Explanation parity: each artifact's occlusion maps against the Keras model's, TensorFlow-free.

The Keras model's maps of a fixed, seeded sample of test images are stored in the release
(``explain_reference.npz``, recorded with its sha256 in the manifest's ``reference`` entry)
by :func:`edgekit.workstation.explain_reference.write_reference_maps`. Here every artifact
makes its own maps of the same images for the same classes, the same way, and is measured
against them: mean rank correlation and top-10 % overlap, each with a bar by precision.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, runtime, verify
from edgekit.device.explain import compare, faithfulness, occlusion, panels, session

REFERENCE_FILE = "explain_reference.npz"
REPORT_JSON = "explain.json"
FIGURE = "explain.png"
DEFAULT_SAMPLE = 200
DEFAULT_SEED = 42
TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


@dataclasses.dataclass(frozen=True)
class Bar:
    """The least mean agreement an artifact's maps must reach with the Keras model's."""

    min_rank_correlation: float
    min_top_overlap: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# Measured on the committed release (docs/explain.md): fp32 1.000/1.000, fp16 1.000/1.000,
# dynamic 0.997/0.985, int8 0.953/0.905 (TFLite) and 0.991/0.958 (ONNX); bars leave a margin.
DEFAULT_BARS: dict[str, Bar] = {
    "fp32": Bar(0.99, 0.95),
    "fp16": Bar(0.99, 0.95),
    "dynamic": Bar(0.95, 0.90),
    "int8": Bar(0.85, 0.75),
}
BAR_FIELDS = {"rank_correlation": "min_rank_correlation", "top_overlap": "min_top_overlap"}


def with_overrides(bars: dict[str, Bar], overrides: list[str]) -> dict[str, Bar]:
    """Apply ``PRECISION.MEASURE=VALUE`` overrides, e.g. ``int8.rank_correlation=0.9``."""
    result = dict(bars)
    for text in overrides:
        key, _, value_text = text.partition("=")
        precision, _, measure = key.strip().partition(".")
        try:
            value = float(value_text)
        except ValueError:
            value = float("nan")
        if not 0 <= value <= 1 or precision not in result or measure not in BAR_FIELDS:
            raise ValueError(f"bar {text!r} is not PRECISION.MEASURE=VALUE with a precision "
                             f"of {', '.join(result)}, a measure of {', '.join(BAR_FIELDS)} "
                             "and a value in 0..1 (e.g. int8.rank_correlation=0.9)")
        result[precision] = dataclasses.replace(result[precision], **{BAR_FIELDS[measure]: value})
    return result


def sample_indices(count: int, size: int = DEFAULT_SAMPLE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The fixed sample: ``size`` distinct test indices drawn with ``seed``, in order."""
    chosen = np.random.default_rng(seed).choice(count, size=min(size, count), replace=False)
    return np.sort(chosen).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ReferenceMaps:
    """What explain_reference.npz holds: the Keras model's maps of the sample."""

    indices: np.ndarray  # test-set indices [N]
    labels: np.ndarray  # true classes [N]
    classes: np.ndarray  # the class each map explains (the Keras model's prediction) [N]
    probabilities: np.ndarray  # the Keras model's probabilities [N, classes]
    maps: np.ndarray  # the Keras model's occlusion maps [N, H, W]
    cams: dict[str, np.ndarray]  # its gradient maps by method [N, H, W] (none: no convolution)
    settings: occlusion.Settings
    seed: int
    default_method: str | None = None  # the gradient method shown and checked
    mean_image: np.ndarray | None = None  # the test split's mean image [H, W, C], for the fill

    @property
    def gradcam(self) -> np.ndarray | None:
        return self.cams.get("gradcam")

    @property
    def default_cam(self) -> np.ndarray | None:
        return None if self.default_method is None else self.cams.get(self.default_method)

    def arrays(self) -> dict[str, np.ndarray]:
        payload = {"indices": self.indices, "labels": self.labels, "classes": self.classes,
                   "probabilities": self.probabilities, "maps": self.maps,
                   "patch": np.int64(self.settings.patch), "stride": np.int64(self.settings.stride),
                   "seed": np.int64(self.seed)}
        # Gradient maps lie in [0, 1]: half precision (3 decimals) keeps the file small.
        payload.update({f"cam_{method}": np.asarray(cam, dtype=np.float16)
                        for method, cam in self.cams.items()})
        if self.default_method is not None:
            payload["default_method"] = np.str_(self.default_method)
        if self.mean_image is not None:
            payload["mean_image"] = self.mean_image
        return {name: np.asarray(value) for name, value in payload.items()}


def load_reference_maps(folder: Path, manifest: dict[str, Any]) -> ReferenceMaps:
    reference = manifest.get("reference") or {}
    name = reference.get("explanations_file")
    if name is None:
        raise errors.ManifestError(
            f"{folder}/manifest.json records no explanation reference; make it with `edgekit "
            f"explain {folder} --write-reference` (needs TensorFlow).")
    made_for = (reference.get("explanations") or {}).get("model_sha256")
    if made_for and reference.get("sha256") and made_for != reference["sha256"]:
        raise errors.ManifestError(
            f"{folder}/{name} holds the maps of another Keras model than the release's "
            f"{reference.get('file')}; remake them with `edgekit explain {folder} "
            "--write-reference`.")
    stored = verify.load_npz_checked(manifest_module.safe_file(folder, name),
                                     reference.get("explanations_sha256"))
    cams = {name[len("cam_"):]: np.asarray(stored[name], dtype=np.float32)
            for name in stored if name.startswith("cam_")}
    if "gradcam" in stored:  # a reference written before HiResCAM
        cams.setdefault("gradcam", stored["gradcam"])
    default = str(stored["default_method"]) if "default_method" in stored else None
    try:
        return ReferenceMaps(
            stored["indices"], stored["labels"], stored["classes"], stored["probabilities"],
            stored["maps"], cams, occlusion.Settings(int(stored["patch"]), int(stored["stride"])),
            int(stored["seed"]), default if default in cams else None,
            stored["mean_image"] if "mean_image" in stored else None)
    except (KeyError, ValueError) as error:
        raise errors.ManifestError(f"{folder}/{name} is incomplete ({error}); rewrite it with "
                                   f"`edgekit explain {folder} --write-reference`.") from error


def sample_images(folder: Path, manifest: dict[str, Any], reference: ReferenceMaps,
                  spec: datasets.DataSpec | None) -> tuple[np.ndarray, np.ndarray]:
    """The sample's pixels from the release's test split, checked against the stored labels,
    and the split's mean image (the stored one, if the reference has it)."""
    contract = manifest_module.contract_of(manifest, folder)
    test = verify.release_test_split(manifest, contract, spec)
    if len(test) <= int(reference.indices.max(initial=0)) or not np.array_equal(
            test.labels[reference.indices], reference.labels):
        raise errors.DataError("the test images differ from those the explanation reference was "
                               "made on; pass the release's own dataset with --data.")
    mean = (reference.mean_image if reference.mean_image is not None
            else test.images.mean(axis=0, dtype=np.float64))
    return test.images[reference.indices], mean


@dataclasses.dataclass
class ArtifactExplanation:
    file: str
    precision: str
    format: str
    agreement: compare.Agreement | None = None
    checks: dict[str, tuple[float, float, bool]] = dataclasses.field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    maps: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(passed for _, _, passed in self.checks.values())

    def failures(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        return [f"{measure} {value:.3f} < {bar:.3f}"
                for measure, (value, bar, passed) in self.checks.items() if not passed]


@dataclasses.dataclass
class Faithfulness:
    """Deletion/insertion scores of the stored maps, through one artifact's forward pass."""

    scored_on: str
    scores: faithfulness.Scores | None
    seconds: float
    error: str | None = None

    def check(self, method: str | None) -> dict[str, Any] | None:
        if self.scores is None or method is None:
            return None
        return faithfulness.beats_random(self.scores, method)


@dataclasses.dataclass
class Measurement:
    reference: ReferenceMaps
    images: np.ndarray
    mask: np.ndarray
    results: list[ArtifactExplanation]
    bars: dict[str, Bar]
    faithfulness: Faithfulness | None = None

    @property
    def faithfulness_passed(self) -> bool:
        """The default method beats random for every fill (no default method, or not measured:
        nothing to check; measured but not scored: failed)."""
        if self.reference.default_method is None or self.faithfulness is None:
            return True
        if self.faithfulness.scores is None:
            return False
        check = self.faithfulness.check(self.reference.default_method)
        return bool(check and check["passed"])

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results) and self.faithfulness_passed

    @property
    def source(self) -> str:
        return (f"{len(self.reference.indices)} test images drawn with seed {self.reference.seed}"
                f", patch {self.reference.settings.patch}, stride {self.reference.settings.stride}")


def measure(folder: Path, bars: dict[str, Bar], spec: datasets.DataSpec | None = None,
            threads: int | None = None, echo: Callable[[str], None] = print,
            faithful: bool = True) -> Measurement:
    """Every artifact's occlusion maps of the stored sample against the Keras model's; with
    ``faithful``, the stored maps' deletion/insertion scores too (:func:`score_maps`)."""
    folder = Path(folder)
    manifest = manifest_module.load(folder)
    contract = manifest_module.contract_of(manifest, folder)
    reference = load_reference_maps(folder, manifest)
    images, mean_image = sample_images(folder, manifest, reference, spec)
    mask = occlusion.support(images, contract.background, reference.settings)
    results = []
    for entry in manifest["artifacts"]:
        result = ArtifactExplanation(entry["file"], entry["precision"], entry["format"])
        started = time.perf_counter()
        try:
            model = runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=threads)
            made = occlusion.occlusion_maps(model.predict, images, contract.background,
                                            reference.settings, reference.classes)
            result.maps, result.probabilities = made.maps, made.probabilities
            result.agreement = compare.agreement(made.maps, reference.maps, mask,
                                                 reference.indices)
            result.checks = _checks(result.agreement, bars, entry["precision"])
        except errors.EdgekitError as error:
            result.error = str(error)
        result.seconds = time.perf_counter() - started
        echo(f"  {'✓' if result.passed else '✗'} {result.file} explanations "
             f"({result.seconds:.1f} s)")
        results.append(result)
    if not faithful:
        return Measurement(reference, images, mask, results, bars)
    scored = score_maps(folder, manifest, reference, images, mean_image, threads)
    echo(f"  {'✓' if scored.error is None else '✗'} deletion/insertion scores of the stored maps "
         f"through {scored.scored_on} ({scored.seconds:.1f} s)")
    return Measurement(reference, images, mask, results, bars, scored)


def scoring_artifact(manifest: dict[str, Any]) -> str:
    """The artifact whose forward pass scores the Keras maps: the first fp32 file (the Keras
    model's own answers to 1e-4), else the first artifact."""
    entries = manifest["artifacts"]
    return next((e["file"] for e in entries if e["precision"] == "fp32"), entries[0]["file"])


def score_maps(folder: Path, manifest: dict[str, Any], reference: ReferenceMaps,
               images: np.ndarray, mean_image: np.ndarray, threads: int | None) -> Faithfulness:
    """Deletion and insertion AUCs of every stored map (and random), for both fills."""
    started = time.perf_counter()
    name = scoring_artifact(manifest)
    contract = manifest_module.contract_of(manifest, folder)
    fills = {fill: faithfulness.fill_images(fill, contract.background, mean_image, contract.shape)
             for fill in faithfulness.FILLS}
    maps = {**reference.cams, "occlusion": reference.maps}
    try:
        model = runtime.load(manifest_module.safe_file(folder, name), threads=threads)
        scores = faithfulness.score(model.predict, images, reference.classes, maps, fills,
                                    reference.settings.patch)
    except errors.EdgekitError as error:
        return Faithfulness(name, None, time.perf_counter() - started, str(error))
    return Faithfulness(name, scores, time.perf_counter() - started)


def _checks(agreement: compare.Agreement, bars: dict[str, Bar],
            precision: str) -> dict[str, tuple[float, float, bool]]:
    bar = bars.get(precision)
    if bar is None:
        raise errors.ParityError(f"no explanation bar for precision {precision!r}")
    return {name: (value, limit, value >= limit - 1e-12) for name, value, limit in (
        ("rank_correlation", agreement.mean_rank_correlation, bar.min_rank_correlation),
        ("top_overlap", agreement.mean_top_overlap, bar.min_top_overlap))}


def table(measurement: Measurement) -> list[str]:
    """One row per artifact: the two means beside their bars, the least-agreeing image."""
    header = (f"| {'artifact':<20} | {'rank corr. (bar)':>20} | {'top-10 % IoU (bar)':>20} | "
              f"{'worst image (rank corr.)':>24} | ok |")
    lines = [header, "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"]
    for result in measurement.results:
        if result.agreement is None:
            lines.append(f"| {result.file:<20} | error: {result.error} |")
            continue
        cells = []
        for name in ("rank_correlation", "top_overlap"):
            value, bar, passed = result.checks[name]
            cells.append(f"{value:.3f} ({bar:.2f}) {'✓' if passed else '✗'}")
        worst = result.agreement.worst(1)[0]
        worst_cell = f"#{worst['index']} ({worst['rank_correlation']:.3f})"
        lines.append(f"| {result.file:<20} | {cells[0]:>20} | {cells[1]:>20} | {worst_cell:>24} "
                     f"| {'✓' if result.passed else '✗'}  |")
    return lines


def failure_message(measurement: Measurement) -> str:
    failed = [result for result in measurement.results if not result.passed]
    details = "; ".join(f"{result.file}: {', '.join(result.failures())}" for result in failed)
    parts = [f"explanation parity failed for {len(failed)} of {len(measurement.results)} "
             f"artifact(s): {details}"] if failed else []
    if not measurement.faithfulness_passed:
        method = measurement.reference.default_method
        scored = measurement.faithfulness
        if scored is None or scored.scores is None:
            why = "could not be scored" + (f" ({scored.error})" if scored and scored.error else "")
        else:
            check = scored.check(method) or {}
            why = "does not beat a random ranking by 2 standard errors with the " + ", ".join(
                f"{fill} fill" for fill in scored.scores.fills if not check[fill]["passed"])
        parts.append(f"the {method} map {why}")
    return "; ".join(parts)


def write_reports(folder: Path, measurement: Measurement) -> list[Path]:
    """reports/explain.json, reports/explain.png and each artifact's manifest entry."""
    folder = Path(folder)
    manifest = manifest_module.load(folder)  # as verify left it: its parity metrics kept
    reference = manifest.get("reference") or {}
    reports = fileio.ensure_dir(folder / "reports")
    figure = panels.save_png(sample_figure(measurement, manifest_module.contract_of(
        manifest, folder).labels, str(reference.get("file", "Keras"))), reports / FIGURE)
    payload: dict[str, Any] = {
        "measured_on": measurement.source,
        "reference": reference.get("file"),
        "reference_sha256": reference.get("sha256"),
        "explanations_file": reference.get("explanations_file"),
        "method": {"occlusion": measurement.reference.settings.to_dict(),
                   "class": "the Keras model's predicted class",
                   "compared_pixels": "those some patch position changes",
                   "resolution": compare.RESOLUTION, "top_percent": compare.TOP_PERCENT},
        "bars": {precision: bar.to_dict() for precision, bar in measurement.bars.items()},
        "passed": measurement.passed,
        "artifacts": [
            {"file": r.file, "format": r.format, "precision": r.precision, "passed": r.passed,
             "error": r.error, "seconds": round(r.seconds, 2),
             "measures": None if r.agreement is None else r.agreement.summary(),
             "checks": {name: {"value": value, "bar": bar, "passed": passed}
                        for name, (value, bar, passed) in r.checks.items()}}
            for r in measurement.results],
        "sanity": (reference.get("explanations") or {}).get("sanity"),
        "figure": figure.name,
    }
    scored = measurement.faithfulness
    if scored is not None and scored.scores is not None:
        payload.update(faithfulness.report(scored.scores, measurement.reference.default_method,
                                           scored.scored_on))
        payload["faithfulness"].update(seconds=round(scored.seconds, 2),
                                       passed=measurement.faithfulness_passed)
    elif scored is not None:
        payload["faithfulness"] = {"scored_on": scored.scored_on, "error": scored.error,
                                   "passed": measurement.faithfulness_passed}
    written = [fileio.write_json(reports / REPORT_JSON, payload), figure]
    for result in measurement.results:
        entry = manifest_module.find_artifact(manifest, result.file)
        if entry is not None:
            entry["explanation"] = None if result.agreement is None else {
                "measured_on": measurement.source,
                "images": int(len(result.agreement.indices)),
                "mean_rank_correlation": result.agreement.mean_rank_correlation,
                "mean_top_overlap": result.agreement.mean_top_overlap,
                "passed": result.passed}
    manifest_module.save(folder, manifest)
    return written


def figure_rows(measurement: Measurement, examples: int = 2) -> list[int]:
    """Positions in the sample to draw: clear examples (a strong Keras map), then the image
    the least-agreeing artifact explains worst."""
    strength = measurement.reference.maps.max(axis=(1, 2))
    chosen = [int(i) for i in np.flatnonzero(strength >= 0.2)[:examples]]
    measured = [r.agreement for r in measurement.results if r.agreement is not None]
    if measured:
        worst = min(measured, key=lambda agreement: agreement.mean_rank_correlation)
        position = int(np.argmin(worst.rank_correlation))
        if position not in chosen:
            chosen.append(position)
    return chosen or [0]


def sample_figure(measurement: Measurement, labels: tuple[str, ...],
                  keras_name: str) -> Image.Image:
    reference = measurement.reference
    rows = []
    for number in figure_rows(measurement):
        index, explained = int(reference.indices[number]), labels[int(reference.classes[number])]
        method, shown = reference.default_method, reference.default_cam
        if shown is None and reference.gradcam is not None:
            method, shown = "gradcam", reference.gradcam
        cam = None if shown is None or method is None else (
            TITLES.get(method, method), shown[number], reference.probabilities[number])
        models = [(keras_name, reference.maps[number], reference.probabilities[number], "")]
        models += [(r.file, r.maps[number], r.probabilities[number],
                    session.agreement_note(r.agreement, number))
                   for r in measurement.results if r.maps is not None and r.probabilities is not None]
        rows.append(session.map_row(
            measurement.images[number], f"test image {index}: every map explains '{explained}'",
            (f"test image {index}", f"true: {labels[int(reference.labels[number])]}",
             f"explains: {explained}"), labels, models, cam))
    return panels.stack(rows)
