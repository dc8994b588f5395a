"""``edgekit verify``: run every artifact in the manifest against the reference outputs.

Device-safe: the reference model's probabilities are stored in ``reference.npz`` (full test
set; images come from the dataset) and ``golden.npz`` (a few hundred images with their
pixels), so neither TensorFlow nor, with ``--golden``, the dataset is needed.
Every artifact is measured and checked; failures are collected and reported together.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.contract import InputContract
from edgekit.device import datasets, parity, runtime
from edgekit.device.micro import parity as micro_parity

REPORT_JSON = "parity.json"
REPORT_MARKDOWN = "parity.md"


@dataclasses.dataclass(frozen=True)
class Reference:
    images: np.ndarray | None  # None: read from the dataset
    labels: np.ndarray
    probabilities: np.ndarray
    indices: np.ndarray
    source: str


@dataclasses.dataclass
class ArtifactResult:
    file: str
    precision: str
    format: str
    measures: dict[str, Any] | None = None
    checks: list[parity.Check] = dataclasses.field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    nested_under: str | None = None  # the artifact this row runs under another runtime (TFLM)

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        return [f"{check.measure} {format_value(check.measure, check.value)} not "
                f"{check.comparison} {format_value(check.measure, check.bar)}"
                for check in self.checks if not check.passed]


def load_npz_checked(path: Path, expected_sha256: str | None) -> Any:
    if not path.is_file():
        raise errors.ManifestError(f"{path} is missing; re-export with `edgekit export`.")
    if expected_sha256 is not None and fileio.sha256_of(path) != expected_sha256:
        raise errors.ManifestError(f"{path} does not match the sha256 in the manifest; "
                                   "re-export with `edgekit export`.")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise errors.ManifestError(f"{path} is not a readable .npz file: {error}") from error


def load_reference(folder: Path, manifest: dict[str, Any], golden: bool,
                   spec: datasets.DataSpec | None) -> Reference:
    reference = manifest.get("reference") or {}
    if golden:
        name = reference.get("golden_file", "golden.npz")
        bundle = load_npz_checked(manifest_module.safe_file(folder, name),
                                  reference.get("golden_sha256"))
        return Reference(bundle["images"], bundle["labels"], bundle["probabilities"],
                         bundle["indices"], f"golden bundle {name}")
    name = reference.get("outputs_file", "reference.npz")
    stored = load_npz_checked(manifest_module.safe_file(folder, name),
                              reference.get("outputs_sha256"))
    test = release_test_split(manifest, manifest_module.contract_of(manifest, folder), spec)
    if not np.array_equal(test.labels, stored["labels"]):
        raise errors.DataError("the test labels in the dataset differ from those the reference "
                               "outputs were computed on; pass the release's own dataset with "
                               "--data.")
    labels = stored["labels"]
    return Reference(test.images, labels, stored["probabilities"], np.arange(len(labels)),
                     f"all {len(labels):,} test images")


def release_test_split(manifest: dict[str, Any], contract: InputContract,
               spec: datasets.DataSpec | None) -> datasets.Split:
    """The release's test images: the manifest's recorded split of its dataset, replayed.

    ``spec`` points at the dataset where it lives now (a folder moved to another machine);
    without it, the recorded location (or Fashion-MNIST's lookup).
    """
    record = manifest.get("dataset") or {"kind": datasets.FASHION_MNIST_NAME}
    if record.get("kind") != "folder":
        data = spec.data if spec is not None else None
        return datasets.load_test(None if data in (None, datasets.FASHION_MNIST_NAME) else data)
    root = spec.data if spec is not None else str(record["root"])
    skip_bad = spec.skip_bad_images if spec is not None else False
    return datasets.open_dataset(root, record=record, contract=contract, skip_bad=skip_bad,
                                 splits=("test",)).test


def verify(folder: Path, bars: dict[str, parity.Bar], golden: bool = False,
           spec: datasets.DataSpec | None = None, threads: int | None = None, write: bool = True,
           echo: Callable[[str], None] = print,
           check_graph: Callable[[Path], None] | None = None) -> list[ArtifactResult]:
    """Measure every artifact of the release against its reference; ``check_graph`` is an extra
    check of each file before it loads (the CLI passes ``onnx.checker`` where onnx is installed)."""
    folder = Path(folder)
    manifest = manifest_module.load(folder)
    if not manifest["artifacts"]:
        raise errors.ManifestError(f"{folder}/manifest.json lists no artifacts; run `edgekit export`.")
    contract = manifest_module.contract_of(manifest, folder)
    reference = load_reference(folder, manifest, golden, spec)
    images = reference.images
    results = []
    for entry in manifest["artifacts"]:
        result = ArtifactResult(entry["file"], entry["precision"], entry["format"])
        started = time.perf_counter()
        try:
            model = runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=threads,
                                 check_graph=check_graph)
            outputs = model.predict(images)
            result.measures = parity.measure(reference.probabilities, outputs, reference.labels,
                                             contract.labels, reference.indices)
            bar = bars.get(entry["precision"])
            if bar is None:
                raise errors.ParityError(f"no parity bar for precision {entry['precision']!r}")
            result.checks = parity.check(result.measures, bar)
        except errors.EdgekitError as error:
            result.error = str(error)
        result.seconds = time.perf_counter() - started
        echo(f"  {'✓' if result.passed else '✗'} {result.file} ({result.seconds:.1f} s)")
        results.append(result)
    results += micro_parity.rows(folder, manifest, reference, bars, threads, echo)
    if write:
        write_reports(folder, manifest, results, bars, reference.source)
    return results


def format_value(measure: str, value: float | None) -> str:
    if value is None:
        return "—"
    if measure == "agreement_percent":
        return f"{value:.2f}%"
    if measure == "accuracy_drop_pp":
        return f"{value:+.2f} pp"
    return f"{value:.2e}"


def _cell(cells: dict[str, parity.Check], name: str) -> str:
    check = cells[name]
    mark = "✗" if not check.passed else "⚠" if check.warning else "✓"
    return f"{format_value(name, check.value)} ({format_value(name, check.bar)}) {mark}"


def table(results: list[ArtifactResult]) -> list[str]:
    """The parity table: measured value beside each bar, ✓/✗ per bar and per artifact."""
    width = max([20] + [len(result.file) for result in results])  # "<file> @ tflite-micro" rows
    header = (f"| {'artifact':<{width}} | {'accuracy':>8} | {'agreement (bar)':>21} | "
              f"{'max Δp (bar)':>22} | {'mean Δp':>9} | {'acc. drop (bar)':>22} | "
              f"{'flips':>5} | {'McNemar p':>9} | ok |")
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for result in results:
        if result.measures is None:
            lines.append(f"| {result.file:<{width}} | error: {result.error} |")
            continue
        cells = {check.measure: check for check in result.checks}
        cell = functools.partial(_cell, cells)
        measures = result.measures
        lines.append(
            f"| {result.file:<{width}} | {measures['accuracy']:>8.2%} | {cell('agreement_percent'):>21} | "
            f"{cell('max_abs_diff'):>22} | {measures['mean_abs_diff']:>9.1e} | "
            f"{cell('accuracy_drop_pp'):>22} | {len(measures['flips']):>5} | "
            f"{measures['mcnemar']['p_value']:>9.3f} | {'✓' if result.passed else '✗'}  |")
    return lines


def warnings(results: list[ArtifactResult]) -> list[str]:
    """One line per check that passed on a sample too small to show its bar is met."""
    return [f"warning: {result.file}: {check.warning}" for result in results
            for check in result.checks if check.warning]


def write_reports(folder: Path, manifest: dict[str, Any], results: list[ArtifactResult],
                  bars: dict[str, parity.Bar], source: str) -> None:
    """parity.json, parity.md, and the manifest's metrics: one measurement, one truth."""
    reports = fileio.ensure_dir(folder / "reports")
    payload = {
        "measured_on": source,
        "reference": (manifest.get("reference") or {}).get("file"),
        "reference_sha256": (manifest.get("reference") or {}).get("sha256"),
        "bars": {precision: bar.to_dict() for precision, bar in bars.items()},
        "passed": all(result.passed for result in results),
        "artifacts": [
            {"file": r.file, "format": r.format, "precision": r.precision, "passed": r.passed,
             "error": r.error, "measures": r.measures,
             "checks": [dataclasses.asdict(check) for check in r.checks]}
            for r in results if r.nested_under is None
        ],
    }
    micro_parity.nest(payload, manifest, results, source)
    fileio.write_json(reports / REPORT_JSON, payload)
    fileio.write_text(reports / REPORT_MARKDOWN, markdown(results, source))
    for result in results:
        entry = manifest_module.find_artifact(manifest, result.file)
        if entry is None:
            continue
        if result.measures is None:
            entry["metrics"] = None
            continue
        measures = result.measures
        entry["metrics"] = {
            "measured_on": source,
            "images": measures["images"],
            "accuracy": measures["accuracy"],
            "agreement": measures["agreement"],
            "max_abs_diff": measures["max_abs_diff"],
            "mean_abs_diff": measures["mean_abs_diff"],
            "flips": len(measures["flips"]),
            "mcnemar_p": measures["mcnemar"]["p_value"],
            "parity_passed": result.passed,
        }
    manifest_module.save(folder, manifest)


def markdown(results: list[ArtifactResult], source: str) -> str:
    lines = [f"# Parity against the Keras reference ({source})", "",
             "Bars in brackets; ✓ passed, ✗ failed, ⚠ passed but the sample is too small to "
             "show the bar is met (95 % Wilson interval). Produced by `edgekit verify`.", ""]
    lines += table(results) + micro_parity.notes(results)
    notes = warnings(results)
    if notes:
        lines += [""] + [f"- {note.removeprefix('warning: ')}" for note in notes]
    for result in results:
        if result.measures is None:
            continue
        lines += ["", f"## {result.file}", ""]
        mcnemar = result.measures["mcnemar"]
        lines.append(f"McNemar exact test: reference-only correct {mcnemar['reference_only_correct']}, "
                     f"artifact-only correct {mcnemar['artifact_only_correct']}, "
                     f"p = {mcnemar['p_value']:.3f}.")
        lines += ["", "| class | reference acc. | artifact acc. | Δ pp |", "|---|---|---|---|"]
        for label, row in result.measures["per_class"].items():
            lines.append(f"| {label} | {row['reference_accuracy']:.2%} | "
                         f"{row['artifact_accuracy']:.2%} | {row['delta_pp']:+.2f} |")
        flips = result.measures["flips"]
        ties = result.measures.get("near_tie_flips")
        split = "" if ties is None else (f"; {ties} near-ties (Keras top-2 margin < the artifact's "
                                         f"max |Δp| on that image), "
                                         f"{result.measures['confident_flips']} confident")
        lines += ["", f"Flips ({len(flips)}{split}):" if flips else "No flips."]
        if flips:
            lines += ["", "| test index | true | reference | artifact |", "|---|---|---|---|"]
            lines += [f"| {flip['index']} | {flip['true']} | {flip['reference']} | "
                      f"{flip['artifact']} |" for flip in flips]
    return "\n".join(lines) + "\n"
