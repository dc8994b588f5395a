"""The ``<artifact> @ tflite-micro`` rows of ``edgekit verify``: each int8 TFLite artifact again,
under TensorFlow Lite Micro, with the same measures and bars as every artifact.

TFLM's host build runs one image per invoke on reference kernels (a few ms an image), so the
test split is shared among interpreters in parallel child processes
(``MicroModel.predict_parallel``). A row that cannot run — the package missing, an op TFLM
lacks, an arena failure — is skipped with one warning line; a row that runs and misses a bar
fails ``verify`` like any artifact. Its results nest under the artifact's own entry, in the
manifest and in parity.json.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import errors
from edgekit import manifest as manifest_module
from edgekit.contract import InputContract
from edgekit.device import parity
from edgekit.device.micro import arena, report, tflm

if TYPE_CHECKING:
    from edgekit.device import verify

RUNTIME = tflm.RUNTIME_NAME
SKIPPED = "warning: {what} skipped: {why}; a TFLM row that cannot run does not fail verify"


def _row(folder: Path, entry: dict[str, Any], reference: verify.Reference,
         bars: dict[str, parity.Bar], labels: tuple[str, ...], contract: InputContract,
         workers: int | None) -> verify.ArtifactResult:
    from edgekit.device import verify as verify_module

    path = manifest_module.safe_file(folder, entry["file"])
    row = verify_module.ArtifactResult(f"{entry['file']} @ {RUNTIME}", entry["precision"],
                                       entry["format"], nested_under=entry["file"])
    started = time.perf_counter()
    record = arena.measure(path)  # also checks the file, its ops and that it is full-integer
    model = tflm.MicroModel(path, None, contract)
    outputs = model.predict_parallel(reference.images, workers)
    model.interpreter = None  # free TFLM's arena before the next artifact
    row.measures = parity.measure(reference.probabilities, outputs, reference.labels, labels,
                                  reference.indices)
    row.measures["tflite_micro"] = {"version": tflm.version(), "arena_bytes": record.total_bytes,
                                    "flash_bytes": path.stat().st_size, "note": report.PC_LATENCY_NOTE}
    bar = bars.get(entry["precision"])
    if bar is None:
        raise errors.ParityError(f"no parity bar for precision {entry['precision']!r}")
    row.checks = parity.check(row.measures, bar)
    row.seconds = time.perf_counter() - started
    return row


def rows(folder: Path, manifest: dict[str, Any], reference: verify.Reference,
         bars: dict[str, parity.Bar], workers: int | None,
         echo: Callable[[str], None]) -> list[verify.ArtifactResult]:
    """One TFLM row per int8 TFLite artifact (none, with one warning line, without tflite-micro)."""
    entries = [entry for entry in manifest["artifacts"]
               if entry.get("format") == "tflite" and entry.get("precision") == "int8"]
    if not entries:
        return []
    if not tflm.available():
        echo(SKIPPED.format(what=f"the {RUNTIME} rows", why=f"tflite-micro is not installed; "
                                                       f"add them with `{tflm.INSTALL_HINT}`"))
        return []
    if reference.images is None:
        return []
    contract = manifest_module.contract_of(manifest, folder)
    results = []
    for entry in entries:
        try:
            row = _row(folder, entry, reference, bars, contract.labels, contract, workers)
        except errors.EdgekitError as error:
            echo(SKIPPED.format(what=f"{entry['file']} @ {RUNTIME}", why=str(error).rstrip(".")))
            continue
        echo(f"  {'✓' if row.passed else '✗'} {row.file} ({row.seconds:.1f} s)")
        results.append(row)
    return results


def nest(payload: dict[str, Any], manifest: dict[str, Any],
         results: list[verify.ArtifactResult], source: str) -> None:
    """Put each TFLM row under its artifact: in parity.json's entry and in the manifest's."""
    for row in results:
        if row.nested_under is None or row.measures is None:
            continue
        entry = manifest_module.find_artifact(manifest, row.nested_under)
        reported = next((item for item in payload["artifacts"] if item["file"] == row.nested_under),
                        None)
        measures = row.measures
        if reported is not None:
            reported.setdefault("runtimes", {})[RUNTIME] = {
                "passed": row.passed, "measures": measures,
                "checks": [dataclasses.asdict(check) for check in row.checks]}
        if entry is not None:
            entry.setdefault("runtimes", {})[RUNTIME] = {
                "measured_on": source, "images": measures["images"],
                "accuracy": measures["accuracy"], "agreement": measures["agreement"],
                "max_abs_diff": measures["max_abs_diff"], "mean_abs_diff": measures["mean_abs_diff"],
                "flips": len(measures["flips"]), "mcnemar_p": measures["mcnemar"]["p_value"],
                "parity_passed": row.passed, **measures["tflite_micro"]}


def notes(results: list[verify.ArtifactResult]) -> list[str]:
    """The report's reminder under a table that holds TFLM rows."""
    if not any(row.nested_under for row in results):
        return []
    return ["", f"Rows `@ {RUNTIME}` run the same file under TensorFlow Lite Micro (the "
                "tflite-micro package's host build of TFLM's interpreter and reference kernels, "
                "one image per invoke); its speed on a PC says nothing about a microcontroller's."]
