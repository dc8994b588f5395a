"""One benchmark run: every artifact's row, the compared releases, the cold start, the sweep.

The Keras baselines and the training measurement need TensorFlow, so they are not here: the
caller (``edgekit benchmark``) passes them in from ``edgekit.workstation.benchmark_keras``
where TensorFlow is installed.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, runtime, verify
from edgekit.device.benchmark import machine, timing
from edgekit.device.benchmark.config import REPORT_JSON, BenchmarkConfig

Echo = Callable[[str], None]
# (model.keras, images, config) -> {row name: measured}, as ``measure_artifact`` measures.
KerasBaselines = Callable[[Path, np.ndarray, BenchmarkConfig], dict[str, dict[str, Any]]]
# (release folder, echo) -> the training rates, or None where there is no history.
TrainingThroughput = Callable[[Path, Echo], "dict[str, Any] | None"]
NO_TENSORFLOW = "TensorFlow not installed: skipping {} (pip install 'edgekit[train]')"
SWEEP_BATCHES = (1, 32, 256)


def run(folder: Path, config: BenchmarkConfig, spec: datasets.DataSpec | None = None,
        echo: Echo = print, compare: tuple[Path, ...] = (),
        keras_baselines: KerasBaselines | None = None,
        training_throughput: TrainingThroughput | None = None) -> dict[str, Any]:
    """Benchmark FOLDER's release; ``compare`` adds other releases' artifacts to the same run.

    Compared rows are named ``<folder name>/<file>`` and carry their own MACs, so a second
    architecture is measured in the same process, minutes apart at most, on the same machine.
    ``config.keras`` and ``config.training`` ask for the two measurements passed in; one asked
    for and not passed is skipped with a note.
    """
    folder = Path(folder)
    manifest = manifest_module.load(folder)
    others = [(Path(other), manifest_module.load(Path(other))) for other in compare]
    for release, listed in ((folder, manifest), *others):
        if not listed["artifacts"]:
            raise errors.ManifestError(f"{release} lists no exported models to benchmark; "
                                       f"create them with `edgekit export --output-dir {release}`.")
    images = bench_images(folder, manifest, spec)
    run_snapshot = machine.cpu_snapshot()
    reference = manifest.get("reference") or {}
    macs = int(reference.get("macs_per_image") or 0)
    rows = release_rows(folder, manifest, images, config, echo)
    # The compared releases' rows before the Keras baselines: TensorFlow, once imported,
    # would stay in the process' peak memory that their rows report.
    for other, other_manifest in others:
        rows += release_rows(other, other_manifest, images, config, echo, prefix=other.name)
    if config.keras and reference.get("file"):
        if keras_baselines is None:
            echo(NO_TENSORFLOW.format("the Keras baselines"))
        else:
            echo("benchmarking the Keras baselines")
            for name, measured in keras_baselines(folder / reference["file"], images, config).items():
                rows.append(row(name, "keras", "fp32", "tensorflow", reference.get("bytes", 0),
                                reference.get("test_accuracy"), measured, macs,
                                model=reference.get("architecture")))
    paired = []
    for other, other_manifest in others:
        paired += paired_latency(folder, manifest, other, other_manifest, images, config, echo)
    echo("timing `edgekit predict` on one image from a cold start")
    timing.settle()
    cold_start = predict_cold_start(folder, images[0])
    sweep_rows = sweep(folder, manifest, images, config, echo) if config.sweep else None
    training_rates = None
    if config.training:
        if training_throughput is None:
            echo(NO_TENSORFLOW.format("the training measurement"))
        else:
            training_rates = training_throughput(folder, echo)
    result = {
        # Other processes' and other guests' share of the CPUs over the whole run; each row
        # carries its own ("machine_load"), and its single-image turns theirs.
        "machine_load": machine.machine_load(run_snapshot, machine.cpu_snapshot()),
        "predict_cold_start": cold_start,
        "training": training_rates,
        "sweep": sweep_rows,
        "machine": machine.description(),
        "config": dataclasses.asdict(config),
        # Every row's rate pooled: the best product of the whole run, and the median.
        "matmul": machine.pooled_rate([item["matmul"] for item in rows]),
        "macs_per_image": macs,
        "compared": [compared_release(other, other_manifest) for other, other_manifest in others],
        "paired_latency": paired,
        "rows": rows,
    }
    reports = fileio.ensure_dir(folder / "reports")
    fileio.write_json(reports / REPORT_JSON, result)
    return result


def bench_images(folder: Path, manifest: dict[str, Any],
                 spec: datasets.DataSpec | None) -> np.ndarray:
    """Real test images: the golden bundle's (no dataset needed), else the release's test split."""
    golden_name = (manifest.get("reference") or {}).get("golden_file")
    if golden_name and (folder / golden_name).is_file():
        with np.load(folder / golden_name) as bundle:
            images = bundle["images"]
    else:
        contract = manifest_module.contract_of(manifest, folder)
        images = verify.release_test_split(manifest, contract, spec).images[:512]
    while len(images) < 1024:
        images = np.concatenate([images, images])
    return images


def measure_artifact(path: Path, images: np.ndarray, config: BenchmarkConfig) -> dict[str, Any]:
    """One artifact's row, between two measurements of the matmul rate (``bracketed``)."""
    measured, rate = timing.bracketed(lambda: _measure_model(path, images, config), config)
    return {**measured, "matmul": rate}


def _measure_model(path: Path, images: np.ndarray, config: BenchmarkConfig) -> dict[str, Any]:
    gc.collect()
    resettable = machine.reset_peak_memory()
    before = machine.rss_mb()
    snapshot = machine.cpu_snapshot()
    started = time.perf_counter()
    model = runtime.load(path, threads=config.threads)
    load_seconds = time.perf_counter() - started
    batched = timing.time_batched(model.predict, images, config)
    peak = machine.peak_rss_mb() if resettable else None
    return {
        "machine_load": machine.machine_load(snapshot, machine.cpu_snapshot()),
        "load_seconds": load_seconds,
        "batched": batched,
        "peak_rss_mb": peak,
        "peak_rss_increase_mb": None if peak is None or before is None else peak - before,
    }


def release_rows(folder: Path, manifest: dict[str, Any], images: np.ndarray,
                 config: BenchmarkConfig, echo: Echo,
                 prefix: str | None = None) -> list[dict[str, Any]]:
    """One measured row per artifact of one release folder."""
    reference = manifest.get("reference") or {}
    macs = int(reference.get("macs_per_image") or 0)
    rows = []
    for entry in manifest["artifacts"]:
        name = f"{prefix}/{entry['file']}" if prefix else entry["file"]
        echo(f"benchmarking {name}")
        measured = measure_artifact(manifest_module.safe_file(folder, entry["file"]), images, config)
        rows.append(row(name, entry["format"], entry["precision"],
                        entry.get("runtime", entry["format"]), entry["bytes"],
                        (entry.get("metrics") or {}).get("accuracy"), measured, macs,
                        model=reference.get("architecture")))
    echo(f"timing single images: {len(rows)} models taking turns, {timing.SINGLE_ROUNDS} rounds")
    models = [runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=config.threads)
              for entry in manifest["artifacts"]]
    snapshot = machine.cpu_snapshot()
    singles = timing.time_single_in_rounds([model.predict for model in models], images, config)
    load = machine.machine_load(snapshot, machine.cpu_snapshot())
    for item, single in zip(rows, singles, strict=True):
        item["single"] = {**single, "rounds": timing.SINGLE_ROUNDS, "machine_load": load}
    return rows


def row(name: str, export_format: str, precision: str, runtime_name: str, size: int,
        accuracy: float | None, measured: dict[str, Any], macs: int,
        model: str | None = None) -> dict[str, Any]:
    """One table row; its fractions use the matmul rate measured around its own batches."""
    throughput = measured["batched"]["images_per_second"]
    best = measured["batched"]["best_images_per_second"]
    gflops = measured["matmul"]["gflops"]
    return {
        "artifact": name, "model": model, "format": export_format, "precision": precision,
        "runtime": runtime_name, "bytes": size, "accuracy": accuracy,
        **measured,
        # mean throughput over the best matmul (conservative) and best call over best matmul
        # (the same estimator on both sides).
        "fraction_of_matmul_rate":
            machine.fraction_of_peak(throughput, macs, gflops) if macs else None,
        "best_fraction_of_matmul_rate":
            machine.fraction_of_peak(best, macs, gflops) if macs else None,
    }


def compared_release(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    reference = manifest.get("reference") or {}
    return {"folder": str(folder), "architecture": reference.get("architecture"),
            "parameters": reference.get("parameters"),
            "macs_per_image": int(reference.get("macs_per_image") or 0)}


def paired_latency(folder: Path, manifest: dict[str, Any], other: Path,
                   other_manifest: dict[str, Any], images: np.ndarray, config: BenchmarkConfig,
                   echo: Echo) -> list[dict[str, Any]]:
    """Each file both releases have, the two models timed alternately (``time_alternating``)."""
    theirs = {entry["file"] for entry in other_manifest["artifacts"]}
    pairs = []
    for entry in manifest["artifacts"]:
        if entry["file"] not in theirs:
            continue
        echo(f"timing {entry['file']} against {other.name}/{entry['file']}, call by call in turn")
        ours = runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=config.threads)
        compared = runtime.load(manifest_module.safe_file(other, entry["file"]), threads=config.threads)
        timing.settle()
        snapshot = machine.cpu_snapshot()
        mine, other_single = timing.time_alternating([ours.predict, compared.predict], images, config)
        pairs.append({"file": entry["file"], "compared": other.name, "single": mine,
                      "compared_single": other_single,
                      "machine_load": machine.machine_load(snapshot, machine.cpu_snapshot()),
                      "p50_ratio": mine["p50_ms"] / other_single["p50_ms"]})
    return pairs


def predict_cold_start(folder: Path, image: np.ndarray, repeats: int = 5) -> dict[str, Any]:
    """Wall time of a whole ``edgekit predict`` process on one PNG (default int8 model)."""
    import subprocess
    import sys
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        picture = Path(scratch) / "image.png"
        Image.fromarray(image[:, :, 0]).save(picture)
        command = [sys.executable, "-m", "edgekit.cli", "predict", str(picture), "--model",
                   str(folder / "model_int8.tflite")]
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(time.perf_counter() - started)
    return {"command": "edgekit predict IMAGE --model model_int8.tflite",
            "median_seconds": float(np.median(seconds)), "runs": seconds}


def sweep(folder: Path, manifest: dict[str, Any], images: np.ndarray, config: BenchmarkConfig,
          echo: Echo) -> list[dict[str, Any]]:
    """Batched throughput per artifact over threads, batch size and (LiteRT) XNNPACK mode.

    Answers "is int8 faster than float here, and if not, why": each setting is one row.
    """
    rows = []
    threads_options = sorted({1, os.cpu_count() or 1})
    short = dataclasses.replace(config, batched_seconds=min(config.batched_seconds, 1.0))
    for entry in manifest["artifacts"]:
        path = manifest_module.safe_file(folder, entry["file"])
        modes = runtime.XNNPACK_MODES if entry["format"] == "tflite" else ("n/a",)
        echo(f"sweeping {entry['file']}")
        for mode in modes:
            for threads in threads_options:
                model = runtime.load(path, threads=threads,
                                     xnnpack=mode if mode != "n/a" else "default")
                for batch in SWEEP_BATCHES:
                    timing.settle()
                    measured = timing.time_batched(model.predict, images,
                                                   dataclasses.replace(short, batch_size=batch))
                    rows.append({"artifact": entry["file"], "precision": entry["precision"],
                                 "xnnpack": mode, "threads": threads, "batch_size": batch,
                                 "images_per_second": measured["images_per_second"]})
    return rows
