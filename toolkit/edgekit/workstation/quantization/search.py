"""``edgekit export --keep-float auto``: the first repair levers with which each quantised file
passes.

The release is exported as usual; its int8 and dynamic artifacts are measured against the
parity bars (with their 95 % intervals, ``device.parity``) on the *validation* split. Each file
that fails is repaired on its own: lever sets are tried in the order of ``levers`` (plain,
cross-layer equalisation, single float layers, calibration variants alone then with the best
single layer, pairs of float layers), each converted again and measured on the validation split,
and each file takes the first set with which *it* passes. Keeping every layer that does
arithmetic float is not a repair and is never tried. Each step's levers, agreement, interval,
size, latency and share of MACs left in int8 go in the manifest; the test split measures the
final files once, through ``edgekit verify``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, parity, runtime
from edgekit.workstation.config import ExportConfig, Quantization
from edgekit.workstation.quantization import diagnose, equalize, keras_side
from edgekit.workstation.quantization import levers as levers_module
from edgekit.workstation.quantization.levers import Levers

REPAIRED = ("int8", "dynamic")


@dataclasses.dataclass
class Step:
    levers: Levers
    int8_macs_share: float
    artifacts: dict[str, dict[str, Any]]  # file -> agreement, interval, bytes, passed

    @property
    def keep_float(self) -> tuple[str, ...]:
        return self.levers.keep_float

    @property
    def passed(self) -> bool:
        return all(result["passed"] for result in self.artifacts.values())

    def to_dict(self, plain: Levers) -> dict[str, Any]:
        return {**self.levers.to_dict(plain), "int8_macs_share": self.int8_macs_share,
                "passed": self.passed, "artifacts": self.artifacts}


class Trial:
    """Converts and measures the quantised files with given levers, on the validation split."""

    def __init__(self, folder: Path, config: ExportConfig, spec: datasets.DataSpec | None):
        from edgekit.workstation import evaluation

        self.folder, self.config = folder, config
        self.manifest = manifest_module.load(folder)
        self.contract = manifest_module.contract_of(self.manifest, folder)
        self.model = evaluation.load_keras_model(folder / self.manifest["reference"]["file"])
        self.train, validation = diagnose.release_splits(folder, self.manifest, spec)
        self.images, self.labels = validation.images, validation.labels
        self.reference = evaluation.predict_probabilities(self.model, self.images)
        self.files = {entry["file"]: entry["precision"] for entry in self.manifest["artifacts"]
                      if entry["precision"] in REPAIRED}
        self.macs = keras_side.macs_by_layer(self.model)
        self._calibrations: dict[int, np.ndarray] = {}
        self._models: dict[tuple[Any, ...], Any] = {}
        self._onnx_floats: dict[tuple[Any, ...], Any] = {}

    def calibration(self, size: int) -> np.ndarray:
        from edgekit.workstation import export as export_module

        if size not in self._calibrations:
            self._calibrations[size] = export_module.calibration_images(self.train, size,
                                                                        self.config.seed)
        return self._calibrations[size]

    def source(self, pairs: tuple[tuple[str, str], ...]) -> Any:
        if pairs not in self._models:
            self._models[pairs] = equalize.equalized_copy(self.model, pairs) if pairs \
                else self.model
        return self._models[pairs]

    def payload(self, file: str, levers: Levers) -> bytes:
        from edgekit.workstation import export as export_module
        from edgekit.workstation.export import onnx as onnx_export

        model = self.source(levers.equalize)
        calibration = self.calibration(levers.calibration_size)
        with export_module.quiet_native_output():
            if file.endswith(".tflite"):
                quantization = Quantization.DYNAMIC if self.files[file] == "dynamic" \
                    else Quantization.INT8
                return export_module.to_tflite(model, quantization, calibration, self.contract,
                                               levers.keep_float)
            if levers.equalize not in self._onnx_floats:
                self._onnx_floats[levers.equalize] = onnx_export.to_onnx(
                    model, self.config.opset, self.contract)
            proto = onnx_export.quantize_onnx(self._onnx_floats[levers.equalize], calibration,
                                              levers.keep_float, levers.calibration_method)
            return onnx_export.serialized(proto, "int8", self.contract)

    def measure(self, levers: Levers, files: list[str], bars: dict[str, parity.Bar]) -> Step:
        results = {}
        with tempfile.TemporaryDirectory(prefix="edgekit-keep-float-") as scratch:
            for file in files:
                bar = bars[self.files[file]]
                path = Path(scratch) / file
                path.write_bytes(self.payload(file, levers))
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
        return Step(levers, keras_side.int8_macs_share(self.macs, levers.keep_float), results)


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


class Search:
    """Tries lever sets in order; each file keeps the first set with which it passes."""

    def __init__(self, trial: Trial, plain: Levers, echo: Callable[[str], None]):
        self.trial, self.plain, self.echo = trial, plain, echo
        self.steps: list[Step] = []
        self.chosen: dict[str, tuple[Levers, int]] = {}  # file -> (levers, step index)
        self._seen: set[tuple[str, tuple[Any, ...]]] = set()

    @property
    def pending(self) -> list[str]:
        return [file for file in self.trial.files if file not in self.chosen]

    def attempt(self, levers: Levers) -> Step | None:
        """Measure ``levers`` on the files still failing (a file whose conversion would be the
        same as one measured before is not measured again)."""
        files = []
        for file in self.pending:
            key = (file, levers.effective(file, self.trial.files[file]))
            if key not in self._seen:
                self._seen.add(key)
                files.append(file)
        if not files:
            return None
        step = self.trial.measure(levers, files, parity.DEFAULT_BARS)
        self.steps.append(step)
        self.echo(_describe(step, self.plain))
        for file, result in step.artifacts.items():
            if result["passed"]:
                self.chosen[file] = (levers, len(self.steps) - 1)
        return step

    def run(self, diagnoses: Callable[[], list[diagnose.Diagnosis]]) -> None:
        self.attempt(self.plain)
        if self.pending:
            for levers in self.candidates(diagnoses()):
                self.attempt(levers)
                if not self.pending:
                    return

    def candidates(self, found: list[diagnose.Diagnosis]) -> Iterator[Levers]:
        trial, plain = self.trial, self.plain
        parents = keras_side.parent_map(trial.model)
        for pairs in levers_module.equalization_sets(found, equalize.pairs(trial.model)):
            try:
                trial.source(pairs)
            except Exception as error:  # e.g. a model Keras cannot clone: not this lever
                self.echo(f"  equalisation skipped: the model could not be copied "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})")
                break
            yield dataclasses.replace(plain, equalize=pairs)
        singles, pairs_of_layers = levers_module.keep_float_sets(found, set(trial.macs), parents)
        single_steps: list[Step] = []
        for keep in singles:
            count = len(self.steps)
            yield dataclasses.replace(plain, keep_float=keep)
            single_steps += self.steps[count:]
        variants = levers_module.calibration_variants(plain, len(trial.train))
        yield from variants
        if single_steps:
            best = max(single_steps, key=_mean_agreement).levers.keep_float
            for variant in variants:
                yield dataclasses.replace(variant, keep_float=best)
        for keep in pairs_of_layers:
            yield dataclasses.replace(plain, keep_float=keep)


def _mean_agreement(step: Step) -> float:
    return float(np.mean([result["agreement_percent"] for result in step.artifacts.values()]))


def export_auto(model_path: Path, output_dir: Path, config: ExportConfig,
                spec: datasets.DataSpec | None, input_range: str | None, output: str | None,
                echo: Callable[[str], None] = print) -> list[Any]:
    from edgekit.workstation import export as export_module

    plain_config = dataclasses.replace(config, keep_float=(), equalize=(), explanations=False)
    # Exporting into the model's own folder replaces a wrapped model by its wrapped self; the
    # final export must start from the same file as the first.
    original = Path(model_path).read_bytes()
    export_module.export(model_path, output_dir, plain_config, spec, input_range, output, echo)
    trial = Trial(output_dir, config, spec)
    if not trial.files:
        raise errors.ExportError("--keep-float auto repairs int8 and dynamic files; none was "
                                 "exported (add --quantize int8).")
    plain = Levers(calibration_method=config.calibration_method,
                   calibration_size=min(config.calibration_size, len(trial.train)))
    search = Search(trial, plain, echo)

    def failing_diagnoses() -> list[diagnose.Diagnosis]:
        return [result for result in diagnose.diagnose_release(output_dir, spec, echo=echo)
                if result.file in search.pending]

    search.run(failing_diagnoses)
    if search.pending:
        raise errors.ExportError(
            f"--keep-float auto: no repair made {', '.join(search.pending)} pass on the "
            f"validation split ({len(search.steps) - 1} lever sets tried: equalisation, single "
            "float layers, calibration, pairs of float layers); the release holds the plain "
            "export. See reports/layers.json and try --keep-float NAME by hand.")
    if Path(model_path).read_bytes() != original:
        fileio.write_bytes(model_path, original)
    per_file = {file: levers.config(config) for file, (levers, _) in search.chosen.items()}
    artifacts: list[Any] = export_module.export(
        model_path, output_dir, plain.config(config), spec, input_range, output, echo,
        per_file=per_file)
    manifest = manifest_module.load(output_dir)
    steps = [step.to_dict(plain) for step in search.steps]
    for entry in manifest["artifacts"]:
        if entry["file"] in search.chosen:
            entry["export"]["keep_float_search"] = {
                "split": "validation", "images": int(len(trial.images)),
                "chosen_step": search.chosen[entry["file"]][1], "steps": steps}
    manifest_module.save(output_dir, manifest)
    for file, (levers, _) in search.chosen.items():
        echo(f"{file}: {_summary(levers, plain)} "
             f"({100 * keras_side.int8_macs_share(trial.macs, levers.keep_float):.1f} % of MACs "
             "left in int8)")
    return artifacts


def _summary(levers: Levers, plain: Levers) -> str:
    parts = []
    if levers.equalize:
        parts.append("equalised " + ", ".join(f"{a} -> {b}" for a, b in levers.equalize))
    if levers.keep_float:
        parts.append("kept float " + ", ".join(levers.keep_float))
    if levers.calibration_method != plain.calibration_method:
        parts.append(f"{levers.calibration_method} calibration")
    if levers.calibration_size != plain.calibration_size:
        parts.append(f"{levers.calibration_size} calibration images")
    return "; ".join(parts) or "plain export (kept float: nothing)"


def _describe(step: Step, plain: Levers) -> str:
    cells = "; ".join(f"{file} {result['agreement_percent']:.2f} % "
                      f"({'pass' if result['passed'] else 'fail'})"
                      for file, result in step.artifacts.items())
    return f"  {_summary(step.levers, plain)}: validation agreement {cells}"
