"""``edgekit export --keep-float auto``: the fewest float layers that make the quantised files pass.

The release is exported as usual; if its int8 and dynamic artifacts pass the parity bars (with
their 95 % intervals, ``device.parity``) on the *validation* split, nothing is kept float.
Otherwise the layers are taken in diagnosis order (best rank over the failing artifacts): single
layers first, then each of them with the layer reading its output, then the other pairs; each
set is converted again (TFLite and ONNX), measured on the validation split, and the first set
with which every quantised artifact passes is exported. Keeping every layer that does arithmetic
float is not a repair and is never tried. Each step's agreement, size and share of MACs left in
int8 go in the manifest; the test split measures the final files once, through
``edgekit verify``.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, parity, runtime
from edgekit.workstation.config import ExportConfig, Quantization
from edgekit.workstation.quantization import diagnose, keras_side
from edgekit.workstation.quantization.measures import nearest_measured

CANDIDATES = 4  # layers from the top of the diagnosis: 4 singles, then 6 pairs
REPAIRED = ("int8", "dynamic")


@dataclasses.dataclass
class Step:
    keep_float: tuple[str, ...]
    int8_macs_share: float
    artifacts: dict[str, dict[str, Any]]  # file -> agreement, interval, bytes, passed

    @property
    def passed(self) -> bool:
        return all(result["passed"] for result in self.artifacts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"keep_float": list(self.keep_float), "int8_macs_share": self.int8_macs_share,
                "passed": self.passed, "artifacts": self.artifacts}


class Trial:
    """Converts and measures the quantised files keeping given layers float, on the validation
    split."""

    def __init__(self, folder: Path, config: ExportConfig, spec: datasets.DataSpec | None):
        from edgekit.workstation import evaluation
        from edgekit.workstation import export as export_module

        self.folder, self.config = folder, config
        self.manifest = manifest_module.load(folder)
        self.contract = manifest_module.contract_of(self.manifest, folder)
        self.model = evaluation.load_keras_model(folder / self.manifest["reference"]["file"])
        train, validation = diagnose.release_splits(folder, self.manifest, spec)
        self.calibration = export_module.calibration_images(train, config.calibration_size,
                                                            config.seed)
        self.images, self.labels = validation.images, validation.labels
        self.reference = evaluation.predict_probabilities(self.model, self.images)
        self.files = {entry["file"]: entry["precision"] for entry in self.manifest["artifacts"]
                      if entry["precision"] in REPAIRED}
        self.macs = keras_side.macs_by_layer(self.model)
        self._onnx_float: Any = None

    def int8_share(self, keep: tuple[str, ...]) -> float:
        total = sum(self.macs.values())
        return 1.0 - sum(self.macs.get(name, 0) for name in keep) / total if total else 1.0

    def payload(self, file: str, keep: tuple[str, ...]) -> bytes:
        from edgekit.workstation import export as export_module
        from edgekit.workstation.export import onnx as onnx_export

        with export_module.quiet_native_output():
            if file.endswith(".tflite"):
                quantization = Quantization.DYNAMIC if self.files[file] == "dynamic" \
                    else Quantization.INT8
                return export_module.to_tflite(self.model, quantization, self.calibration,
                                               self.contract, keep)
            if self._onnx_float is None:
                self._onnx_float = onnx_export.to_onnx(self.model, self.config.opset, self.contract)
            proto = onnx_export.quantize_onnx(self._onnx_float, self.calibration, keep)
            return onnx_export.serialized(proto, "int8", self.contract)

    def measure(self, keep: tuple[str, ...], bars: dict[str, parity.Bar]) -> Step:
        results = {}
        with tempfile.TemporaryDirectory(prefix="edgekit-keep-float-") as scratch:
            for file, precision in self.files.items():
                bar = bars[precision]
                path = Path(scratch) / file
                path.write_bytes(self.payload(file, keep))
                loaded = runtime.load(path, verify_sha256=False)
                outputs = loaded.predict(self.images)
                measures = parity.measure(self.reference, outputs, self.labels,
                                          self.contract.labels)
                checks = parity.check(measures, bar)
                agreement = checks[0]
                results[file] = {"agreement_percent": round(agreement.value, 3),
                                 "interval": [round(v, 3) for v in agreement.interval or ()],
                                 "bytes": path.stat().st_size,
                                 "latency_ms_p50": single_image_ms(loaded, self.images[:1]),
                                 "near_tie_flips": measures["near_tie_flips"],
                                 "confident_flips": measures["confident_flips"],
                                 "passed": all(check.passed for check in checks)}
        return Step(keep, round(self.int8_share(keep), 4), results)


def single_image_ms(loaded: Any, image: np.ndarray, runs: int = 30) -> float:
    """Median single-image time in this process: a rough figure beside each step (the
    release's speed is `edgekit benchmark`'s to state)."""
    loaded.predict(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        loaded.predict(image)
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 4)


def candidate_sets(diagnoses: list[diagnose.Diagnosis], arithmetic: set[str],
                   parents: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Single layers, then pairs, from the diagnosis's worst layers (best rank over the failing
    artifacts). A layer kept float still has its output quantised where a quantised layer reads
    it, so each worst layer paired with the layer reading it comes before the other pairs."""
    best: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    for result in diagnoses:
        for rank, error in enumerate(result.ranked):
            best[error.layer] = min(rank, best.get(error.layer, rank))
            groups[error.layer] = list(dict.fromkeys(groups.get(error.layer, []) + error.group))
    top = sorted(best, key=best.__getitem__)[:CANDIDATES]
    units: list[tuple[str, ...]] = [(name,) for name in top]
    measured = set(best)
    units += [(name, child) for name in top for child in best
              if name in nearest_measured(child, parents, measured)]
    tried = {frozenset(keep) for keep in units}
    units += [pair for pair in itertools.combinations(top, 2) if frozenset(pair) not in tried]
    sets = []
    for unit in units:
        # A measured layer is kept with the layers fused into its tensor (conv + norm + act.).
        expanded = tuple(dict.fromkeys(member for name in unit
                                       for member in (groups.get(name) or [name])))
        if (not arithmetic or not arithmetic <= set(expanded)) and expanded not in sets:
            sets.append(expanded)
    return sets


def export_auto(model_path: Path, output_dir: Path, config: ExportConfig,
                spec: datasets.DataSpec | None, input_range: str | None, output: str | None,
                echo: Callable[[str], None] = print) -> list[Any]:
    from edgekit.workstation import export as export_module

    plain = dataclasses.replace(config, keep_float=(), explanations=False)
    # Exporting into the model's own folder replaces a wrapped model by its wrapped self; the
    # final export must start from the same file as the first.
    original = Path(model_path).read_bytes()
    export_module.export(model_path, output_dir, plain, spec, input_range, output, echo)
    trial = Trial(output_dir, config, spec)
    if not trial.files:
        raise errors.ExportError("--keep-float auto repairs int8 and dynamic files; none was "
                                 "exported (add --quantize int8).")
    bars = parity.DEFAULT_BARS
    steps = [trial.measure((), bars)]
    echo(_describe(steps[0]))
    chosen: tuple[str, ...] | None = () if steps[0].passed else None
    if chosen is None:
        failing = {file for file, result in steps[0].artifacts.items() if not result["passed"]}
        diagnoses = [result for result in diagnose.diagnose_release(output_dir, spec, echo=echo)
                     if result.file in failing]
        parents = keras_side.parent_map(trial.model)
        for keep in candidate_sets(diagnoses, set(trial.macs), parents):
            steps.append(trial.measure(keep, bars))
            echo(_describe(steps[-1]))
            if steps[-1].passed:
                chosen = keep
                break
    if chosen is None:
        raise errors.ExportError(
            f"--keep-float auto: no set of up to two layers from the diagnosis made the quantised "
            f"files pass on the validation split ({len(steps) - 1} tried); the release holds "
            "the plain export. See reports/layers.json and try --keep-float NAME by hand.")
    if Path(model_path).read_bytes() != original:
        fileio.write_bytes(model_path, original)
    artifacts: list[Any] = export_module.export(
        model_path, output_dir, dataclasses.replace(config, keep_float=chosen), spec,
        input_range, output, echo)
    manifest = manifest_module.load(output_dir)
    for entry in manifest["artifacts"]:
        if entry["precision"] in REPAIRED:
            entry["export"]["int8_macs_share"] = trial.int8_share(chosen)
            entry["export"]["keep_float_search"] = {
                "split": "validation", "images": int(len(trial.images)),
                "steps": [step.to_dict() for step in steps]}
    manifest_module.save(output_dir, manifest)
    echo(f"kept float: {', '.join(chosen) or 'nothing'} "
         f"({100 * trial.int8_share(chosen):.1f} % of MACs left in int8)")
    return artifacts


def _describe(step: Step) -> str:
    kept = ", ".join(step.keep_float) or "nothing"
    cells = "; ".join(f"{file} {result['agreement_percent']:.2f} % "
                      f"({'pass' if result['passed'] else 'fail'})"
                      for file, result in step.artifacts.items())
    return f"  keep float {kept}: validation agreement {cells}"
