"""``edgekit benchmark``: speed, size and memory of every artifact, against the machine's limit.

Everything is measured in one process and one run, so ratios between rows are fair on a
shared, noisy machine. Device-safe except the optional Keras baselines (only when
TensorFlow is installed) and the optional plots (only when matplotlib is installed).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import datasets, runtime

REPORT_JSON = "benchmark.json"
Measured = TypeVar("Measured")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    batch_size: int = 256
    single_runs: int = 300
    warmup_runs: int = 20
    # Single-image warm-up lasts at least this long, as in TFLite's benchmark_model
    # (--warmup_min_secs, default 0.5).
    warmup_seconds: float = 0.5
    batched_seconds: float = 3.0
    threads: int | None = None
    matmul_size: int = 2048  # numpy's BLAS is nearer its peak at 2048 than at 1024 here
    keras: bool = True
    training: bool = False
    sweep: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.single_runs < 10 or self.warmup_runs < 0:
            raise ValueError("batch size >= 1, single runs >= 10, warm-up runs >= 0")
        if self.batched_seconds <= 0:
            raise ValueError("batched seconds must be positive")
        if self.warmup_seconds < 0:
            raise ValueError("warm-up seconds must not be negative")


def percentiles(samples_seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99 and mean in milliseconds."""
    values = np.asarray(samples_seconds) * 1000.0
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(values.mean()), "runs": int(len(values))}


def warm_up(call: Callable[[np.ndarray], Any], images: np.ndarray,
            config: BenchmarkConfig) -> int:
    """Single-image calls until ``warmup_runs`` are done and ``warmup_seconds`` have passed.

    A count alone is not enough here: after the machine has idled for a few tens of
    milliseconds, single-image calls run slow for a while (measured here, per block of 250
    calls after 0.1 s idle: ONNX Runtime int8 0.159 ms first, 0.11-0.12 ms after about half
    a second; fp32 0.145, then 0.12), so 20 calls (3 ms) measured mostly the ramp.
    """
    started, index = time.perf_counter(), 0
    while index < config.warmup_runs or time.perf_counter() - started < config.warmup_seconds:
        call(images[index % len(images)][None])
        index += 1
    return index


def time_single(call: Callable[[np.ndarray], Any], images: np.ndarray,
                config: BenchmarkConfig) -> dict[str, float]:
    """One model's single-image latency: a warm-up, then ``config.single_runs`` timed calls."""
    return time_single_in_rounds([call], images, config, rounds=1, pause=lambda: None)[0]


SINGLE_ROUNDS = 3


def calls_per_turn(single_runs: int, rounds: int) -> int:
    """Timed calls in each of ``rounds`` turns (the last turn takes what is left)."""
    return -(-single_runs // rounds)


def time_single_in_rounds(calls: list[Callable[[np.ndarray], Any]], images: np.ndarray,
                          config: BenchmarkConfig, rounds: int = SINGLE_ROUNDS,
                          pause: Callable[[], Any] | None = None) -> list[dict[str, float]]:
    """Single-image latency of several models, each timed in ``rounds`` stretches in turn.

    This machine has slower stretches of a few tenths of a second (the same file's p50 moved
    from 0.09 to 0.18 ms between consecutive blocks of 300 calls), so a row timed in one
    stretch carries whichever it hit. Here the models take turns, ``rounds`` times, each
    turn ``config.single_runs / rounds`` calls after ``pause`` (default ``settle``) and a
    full ``warm_up``; a row's percentiles pool its turns, and the order reverses every round.
    Turns, not single calls: alternating call by call puts one model's spinning workers
    beside the other's work and evicts its weights from the caches.
    """
    pause = settle if pause is None else pause
    samples: list[list[float]] = [[] for _ in calls]
    per_turn = calls_per_turn(config.single_runs, rounds)
    order = list(range(len(calls)))
    for round_index in range(rounds):
        start = round_index * per_turn
        count = min(per_turn, config.single_runs - start)
        for which in order:
            pause()
            warm_up(calls[which], images, config)
            for index in range(start, start + count):
                image = images[index % len(images)][None]
                started = time.perf_counter()
                calls[which](image)
                samples[which].append(time.perf_counter() - started)
        order.reverse()
    return [percentiles(values) for values in samples]


def time_alternating(calls: list[Callable[[np.ndarray], Any]], images: np.ndarray,
                     config: BenchmarkConfig) -> list[dict[str, float]]:
    """Single-image latency of several models, timed call by call in turn.

    Every model sees the same image in the same moment's machine state: on a shared machine,
    load that comes and goes lands on all of them alike instead of on whichever ran in that
    second, so their ratio holds far better than that of separately measured blocks. The
    order alternates every round so that no model always runs right after another.
    """
    warm_up(lambda image: [call(image) for call in calls], images, config)
    samples: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for index in range(config.single_runs):
        image = images[index % len(images)][None]
        for which in order:
            started = time.perf_counter()
            calls[which](image)
            samples[which].append(time.perf_counter() - started)
        order.reverse()
    return [percentiles(values) for values in samples]


def time_batched(call: Callable[[np.ndarray], Any], images: np.ndarray,
                 config: BenchmarkConfig) -> dict[str, Any]:
    """Throughput over ``batched_seconds``: the mean rate, and the best single call's rate.

    The best call is the same estimator as the matmul rate (best of its repeats): on a shared
    machine, the other tenants' load lowers a mean far more than a best-of.
    """
    batch = images[: config.batch_size]
    call(batch)  # warm-up, and allocation for this batch size
    done, calls, started = 0, [], time.perf_counter()
    while True:
        call_started = time.perf_counter()
        call(batch)
        calls.append(time.perf_counter() - call_started)
        done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= config.batched_seconds and done >= 3 * len(batch):
            break
    return {"batch_size": len(batch), "images": done, "seconds": elapsed, "calls": len(calls),
            "images_per_second": done / elapsed,
            "best_images_per_second": len(batch) / min(calls),
            "median_images_per_second": len(batch) / float(np.median(calls))}


def matmul_rate(size: int, repeats: int) -> dict[str, Any]:
    """This machine's float32 matrix-multiply rate (numpy's BLAS, all its threads)."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal((size, size), dtype=np.float32)
    right = rng.standard_normal((size, size), dtype=np.float32)
    left @ right
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        seconds.append(time.perf_counter() - started)
    return rate_of(size, seconds)


def rate_of(size: int, seconds: list[float]) -> dict[str, Any]:
    """Best and median GFLOP/s of ``size``-square products that took ``seconds`` each."""
    best, median = min(seconds), float(np.median(seconds))
    flops = 2.0 * size**3
    return {"size": size, "best_seconds": best, "median_seconds": median,
            "gflops": flops / best / 1e9, "gflops_median": flops / median / 1e9,
            "seconds": list(seconds)}


def pooled_rate(rates: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate from several measurements of the same size: every product's time pooled."""
    return rate_of(rates[0]["size"], [second for rate in rates for second in rate["seconds"]])


def own_cpu_seconds() -> float | None:
    """CPU seconds this process has used so far, all threads (None where unknown)."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settle(limit_seconds: float = 1.0, window_seconds: float = 0.02) -> float:
    """Wait until the worker threads of the last measurement stop spinning; seconds waited.

    BLAS and ONNX Runtime keep idle workers busy-waiting after a call so that the next one
    starts at once. Measured here, OpenBLAS burns about 0.11 s of a core after a matmul and
    ONNX Runtime about 0.04 s after a run. On a 2-core machine that takes one of the two
    cores from whatever is measured next (before this wait, the first artifact's
    single-image p50 ran right after the matmul and came out slowest of all). So each
    measurement starts once this process has used under a quarter of a core over a short
    window, or after ``limit_seconds``.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < limit_seconds:
        before = own_cpu_seconds()
        time.sleep(window_seconds)
        after = own_cpu_seconds()
        if before is None or after is None or after - before < 0.25 * window_seconds:
            break
    return time.perf_counter() - started


MATMUL_BRACKET_REPEATS = 5


def bracketed(measure: Callable[[], Measured],
              config: BenchmarkConfig) -> tuple[Measured, dict[str, Any]]:
    """Run ``measure`` between two matmul-rate measurements: its result and the rate.

    This machine's rate drifts from one second to the next (measured here: 143 to 184
    GFLOP/s between consecutive one-second blocks), with host-side load on the shared
    caches, memory and clock, for the matmul and the models alike. So a throughput is
    compared with the rate measured right before and right after it, not with one measured
    a minute earlier. Only whole blocks alternate: timed call by call in turn, each 48 MB
    product evicts the model's working set from the caches and lowers the model's rate.
    """
    settle()
    before = matmul_rate(config.matmul_size, MATMUL_BRACKET_REPEATS)
    settle()
    result = measure()
    settle()
    after = matmul_rate(config.matmul_size, MATMUL_BRACKET_REPEATS)
    settle()
    return result, pooled_rate([before, after])


def fraction_of_peak(images_per_second: float, macs_per_image: int, gflops: float) -> float:
    """Achieved FLOP rate (2 FLOPs per multiply-accumulate) over the measured matmul rate."""
    return images_per_second * macs_per_image * 2.0 / (gflops * 1e9)


def _read_status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        return None
    return None


def parse_proc_stat(text: str) -> dict[str, int] | None:
    """The machine-wide ``cpu`` line of /proc/stat: busy, steal and total clock ticks."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(value) for value in line.split()[1:9]]
            ticks += [0] * (8 - len(ticks))
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            return {"busy": user + nice + system + irq + softirq, "steal": steal,
                    "total": sum(ticks)}
    return None


def cpu_snapshot() -> dict[str, float] | None:
    """Machine-wide CPU ticks and this process's own CPU seconds (children included), now."""
    try:
        import resource  # Unix only, like /proc/stat

        with open("/proc/stat") as stream:
            machine_ticks = parse_proc_stat(stream.read())
    except (ImportError, OSError):
        return None
    if machine_ticks is None:
        return None
    own = sum(usage.ru_utime + usage.ru_stime for usage in
              (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    return {**machine_ticks, "own_seconds": own, "ticks_per_second": os.sysconf("SC_CLK_TCK")}


def machine_load(before: dict[str, float] | None,
                 after: dict[str, float] | None) -> dict[str, float] | None:
    """What else the machine did between two snapshots, as fractions of all its CPU time.

    ``others``: CPU time of every other process (busy ticks minus this process's own CPU
    seconds); ``steal``: time the hypervisor gave the virtual CPUs to other guests. Either
    one well above zero means that row was measured on a disturbed machine.
    """
    if before is None or after is None:
        return None
    tick = after["ticks_per_second"]
    capacity = (after["total"] - before["total"]) / tick
    if capacity <= 0:
        return None
    busy = (after["busy"] - before["busy"]) / tick
    own = after["own_seconds"] - before["own_seconds"]
    return {"cpu_seconds": capacity, "own": min(1.0, max(0.0, own / capacity)),
            "others": min(1.0, max(0.0, (busy - own) / capacity)),
            "steal": (after["steal"] - before["steal"]) / tick / capacity}


def reset_peak_memory() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def measure_artifact(path: Path, images: np.ndarray, config: BenchmarkConfig) -> dict[str, Any]:
    """One artifact's row, between two measurements of the matmul rate (``bracketed``)."""
    measured, rate = bracketed(lambda: _measure_model(path, images, config), config)
    return {**measured, "matmul": rate}


def _measure_model(path: Path, images: np.ndarray, config: BenchmarkConfig) -> dict[str, Any]:
    gc.collect()
    resettable = reset_peak_memory()
    before = _read_status("VmRSS")
    snapshot = cpu_snapshot()
    started = time.perf_counter()
    model = runtime.load(path, threads=config.threads)
    load_seconds = time.perf_counter() - started
    batched = time_batched(model.predict, images, config)
    peak = _read_status("VmHWM") if resettable else None
    return {
        "machine_load": machine_load(snapshot, cpu_snapshot()),
        "load_seconds": load_seconds,
        "batched": batched,
        "peak_rss_mb": peak,
        "peak_rss_increase_mb": None if peak is None or before is None else peak - before,
    }


def keras_baselines(model_path: Path, images: np.ndarray,
                    config: BenchmarkConfig) -> dict[str, Any] | None:
    """Keras through ``model.predict`` and through a direct call (needs TensorFlow)."""
    try:
        import keras  # noqa: F401
    except ImportError:
        return None
    from edgekit.workstation import evaluation

    model = evaluation.load_keras_model(model_path)
    small = dataclasses.replace(config, single_runs=max(10, config.single_runs // 10),
                                warmup_runs=min(config.warmup_runs, 5))
    as_float = images.astype(np.float32)

    def predict(x: np.ndarray) -> Any:
        return model.predict(x.astype(np.float32), verbose=0)

    def direct(x: np.ndarray) -> Any:
        return np.asarray(model(x.astype(np.float32), training=False))

    def measure(call: Callable[[np.ndarray], Any]) -> tuple[dict[str, float], dict[str, Any]]:
        return time_single(call, as_float, small), time_batched(call, as_float, config)

    baselines = {}
    for name, call in (("keras model.predict", predict), ("keras direct call", direct)):
        snapshot = cpu_snapshot()
        (single, batched), rate = bracketed(functools.partial(measure, call), config)
        baselines[name] = {"single": single, "batched": batched, "matmul": rate,
                           "machine_load": machine_load(snapshot, cpu_snapshot())}
    return baselines


def run(folder: Path, config: BenchmarkConfig, data_dir: str | None = None,
        echo: Callable[[str], None] = print, compare: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Benchmark FOLDER's release; ``compare`` adds other releases' artifacts to the same run.

    Compared rows are named ``<folder name>/<file>`` and carry their own MACs, so a second
    architecture is measured in the same process, minutes apart at most, on the same machine.
    """
    folder = Path(folder)
    manifest = manifest_module.load(folder)
    others = [(Path(other), manifest_module.load(Path(other))) for other in compare]
    for release, listed in ((folder, manifest), *others):
        if not listed["artifacts"]:
            raise errors.ManifestError(f"{release} lists no exported models to benchmark; "
                                       f"create them with `edgekit export --output-dir {release}`.")
    images = bench_images(folder, manifest, data_dir)
    run_snapshot = cpu_snapshot()
    reference = manifest.get("reference") or {}
    macs = int(reference.get("macs_per_image") or 0)
    rows = release_rows(folder, manifest, images, config, echo)
    if config.keras and reference.get("file"):
        echo("benchmarking the Keras baselines")
        baselines = keras_baselines(folder / reference["file"], images, config)
        for name, measured in (baselines or {}).items():
            rows.append(row(name, "keras", "fp32", "tensorflow", reference.get("bytes", 0),
                            reference.get("test_accuracy"), measured, macs,
                            model=reference.get("architecture")))
    paired = []
    for other, other_manifest in others:
        rows += release_rows(other, other_manifest, images, config, echo, prefix=other.name)
        paired += paired_latency(folder, manifest, other, other_manifest, images, config, echo)
    echo("timing `edgekit predict` on one image from a cold start")
    settle()
    cold_start = predict_cold_start(folder, images[0])
    sweep_rows = sweep(folder, manifest, images, config, echo) if config.sweep else None
    training_rates = training_throughput(folder, echo) if config.training else None
    result = {
        # Other processes' and other guests' share of the CPUs over the whole run; each row
        # carries its own ("machine_load"), and its single-image turns theirs.
        "machine_load": machine_load(run_snapshot, cpu_snapshot()),
        "predict_cold_start": cold_start,
        "training": training_rates,
        "sweep": sweep_rows,
        "machine": machine(),
        "config": dataclasses.asdict(config),
        # Every row's rate pooled: the best product of the whole run, and the median.
        "matmul": pooled_rate([item["matmul"] for item in rows]),
        "macs_per_image": macs,
        "compared": [compared_release(other, other_manifest) for other, other_manifest in others],
        "paired_latency": paired,
        "rows": rows,
    }
    reports = fileio.ensure_dir(folder / "reports")
    fileio.write_json(reports / REPORT_JSON, result)
    plot(result, reports, echo)
    return result


def compared_release(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    reference = manifest.get("reference") or {}
    return {"folder": str(folder), "architecture": reference.get("architecture"),
            "parameters": reference.get("parameters"),
            "macs_per_image": int(reference.get("macs_per_image") or 0)}


def paired_latency(folder: Path, manifest: dict[str, Any], other: Path,
                   other_manifest: dict[str, Any], images: np.ndarray, config: BenchmarkConfig,
                   echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each file both releases have, the two models timed alternately (``time_alternating``)."""
    theirs = {entry["file"] for entry in other_manifest["artifacts"]}
    pairs = []
    for entry in manifest["artifacts"]:
        if entry["file"] not in theirs:
            continue
        echo(f"timing {entry['file']} against {other.name}/{entry['file']}, call by call in turn")
        ours = runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=config.threads)
        compared = runtime.load(manifest_module.safe_file(other, entry["file"]), threads=config.threads)
        settle()
        snapshot = cpu_snapshot()
        mine, other_single = time_alternating([ours.predict, compared.predict], images, config)
        pairs.append({"file": entry["file"], "compared": other.name, "single": mine,
                      "compared_single": other_single,
                      "machine_load": machine_load(snapshot, cpu_snapshot()),
                      "p50_ratio": mine["p50_ms"] / other_single["p50_ms"]})
    return pairs


def paired_table(result: dict[str, Any]) -> list[str]:
    lines = ["| file | this release p50 ms | compared p50 ms | ratio (< 1: this release faster) |",
             "|---|---|---|---|"]
    for pair in result.get("paired_latency") or []:
        lines.append(f"| {pair['file']} vs {pair['compared']}/{pair['file']} | "
                     f"{pair['single']['p50_ms']:.3f} | {pair['compared_single']['p50_ms']:.3f} | "
                     f"{pair['p50_ratio']:.2f} |")
    return lines if len(lines) > 2 else []


def release_rows(folder: Path, manifest: dict[str, Any], images: np.ndarray,
                 config: BenchmarkConfig, echo: Callable[[str], None],
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
    echo(f"timing single images: {len(rows)} models taking turns, {SINGLE_ROUNDS} rounds")
    models = [runtime.load(manifest_module.safe_file(folder, entry["file"]), threads=config.threads)
              for entry in manifest["artifacts"]]
    snapshot = cpu_snapshot()
    singles = time_single_in_rounds([model.predict for model in models], images, config)
    load = machine_load(snapshot, cpu_snapshot())
    for item, single in zip(rows, singles, strict=True):
        item["single"] = {**single, "rounds": SINGLE_ROUNDS, "machine_load": load}
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
        "fraction_of_matmul_rate": fraction_of_peak(throughput, macs, gflops) if macs else None,
        "best_fraction_of_matmul_rate": fraction_of_peak(best, macs, gflops) if macs else None,
    }


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


SWEEP_BATCHES = (1, 32, 256)


def sweep(folder: Path, manifest: dict[str, Any], images: np.ndarray, config: BenchmarkConfig,
          echo: Callable[[str], None]) -> list[dict[str, Any]]:
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
                    settle()
                    measured = time_batched(model.predict, images,
                                            dataclasses.replace(short, batch_size=batch))
                    rows.append({"artifact": entry["file"], "precision": entry["precision"],
                                 "xnnpack": mode, "threads": threads, "batch_size": batch,
                                 "images_per_second": measured["images_per_second"]})
    return rows


def _by_setting(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
    """Sweep throughput keyed by (artifact, XNNPACK mode, threads, batch size)."""
    return {(row["artifact"], row["xnnpack"], row["threads"], row["batch_size"]):
            row["images_per_second"] for row in rows}


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    settings = sorted({(row["threads"], row["batch_size"]) for row in rows})
    header = "| artifact | XNNPACK | " + " | ".join(f"{t} thr, batch {b}" for t, b in settings) + " |"
    lines = [header, "|---|---|" + "---|" * len(settings)]
    keyed = _by_setting(rows)
    for artifact, mode in dict.fromkeys((row["artifact"], row["xnnpack"]) for row in rows):
        cells = [f"{keyed[(artifact, mode, t, b)]:,.0f}" for t, b in settings]
        lines.append(f"| {artifact} | {mode} | " + " | ".join(cells) + " |")
    return lines


def int8_over_fp32(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per runtime (and XNNPACK mode), int8 throughput over fp32's in each swept setting."""
    keyed = _by_setting(rows)
    pairs = (("model_int8.onnx", "model_fp32.onnx", "ONNX Runtime"),
             ("model_int8.tflite", "model_fp32.tflite", "LiteRT"))
    summary = []
    for int8, fp32, runtime_name in pairs:
        for mode in dict.fromkeys(row["xnnpack"] for row in rows if row["artifact"] == int8):
            ratios = {(threads, batch): value / keyed[(fp32, mode, threads, batch)]
                      for (artifact, xnnpack, threads, batch), value in keyed.items()
                      if artifact == int8 and xnnpack == mode
                      and (fp32, mode, threads, batch) in keyed}
            if ratios:
                summary.append({"runtime": runtime_name, "xnnpack": mode, "ratios": ratios,
                                "faster": sum(ratio > 1.0 for ratio in ratios.values())})
    return summary


def int8_summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in int8_over_fp32(rows):
        where = item["runtime"] + ("" if item["xnnpack"] == "n/a" else f", XNNPACK {item['xnnpack']}")
        ratios = item["ratios"].values()
        lines.append(f"- {where}: int8 faster than fp32 in {item['faster']} of {len(ratios)} "
                     f"settings (int8 / fp32 throughput {min(ratios):.2f}–{max(ratios):.2f})")
    return lines


def training_throughput(folder: Path, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """Training speed from history.json beside the model, and the input pipeline alone."""
    import json

    from edgekit.workstation import training
    from edgekit.workstation.config import TrainConfig

    history_path = folder / training.HISTORY_FILE
    record = training.load_record(folder / training.MODEL_FILE)
    if not history_path.is_file() or record is None:
        echo("no training history beside the model: skipping the training measurement")
        return None
    epochs = json.loads(history_path.read_text())["epochs"]
    config = TrainConfig.from_dict(record["config"])
    echo("measuring the training input pipeline with and without augmentation")
    pipeline = training.input_pipeline_rate(config)
    rates = [epoch["train_images_per_second"] for epoch in epochs]
    median = float(np.median(rates))
    return {
        "epoch_images_per_second_median": median,
        "epoch_seconds_median": float(np.median([epoch["epoch_seconds"] for epoch in epochs])),
        "augmentation": config.augment,
        "pipeline": pipeline,
        "pipeline_headroom": pipeline["augmented"]["images_per_second"] / median,
    }


def bench_images(folder: Path, manifest: dict[str, Any], data_dir: str | None) -> np.ndarray:
    """Real test images: the golden bundle's (no dataset needed), else the dataset's."""
    golden_name = (manifest.get("reference") or {}).get("golden_file")
    if golden_name and (folder / golden_name).is_file():
        with np.load(folder / golden_name) as bundle:
            images = bundle["images"]
    else:
        images = datasets.load_test(data_dir).images[:512]
    while len(images) < 1024:
        images = np.concatenate([images, images])
    return images


def machine() -> dict[str, Any]:
    flags = ""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    import onnxruntime

    try:
        from ai_edge_litert import __version__ as litert_version  # type: ignore[attr-defined]
    except ImportError:
        litert_version = "unknown"
    return {
        "cpu": name,
        "cpus": os.cpu_count(),
        "avx2": " avx2" in flags, "avx512": " avx512f" in flags,
        "vnni": " avx512_vnni" in flags or " avx_vnni" in flags,
        "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__, "ai_edge_litert": litert_version,
    }


def speedup_over_predict(result: dict[str, Any], item: dict[str, Any]) -> float | None:
    """How many times lower this row's single-image p50 is than Keras ``model.predict``'s."""
    baseline = next((row for row in result["rows"] if row["artifact"] == "keras model.predict"), None)
    if baseline is None:
        return None
    return baseline["single"]["p50_ms"] / item["single"]["p50_ms"]


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"| {'artifact':<30} | {'size':>9} | {'accuracy':>8} | {'load ms':>7} | {'p50 ms':>7} | "
             f"{'p90 ms':>7} | {'p99 ms':>7} | {'× predict':>9} | {'batch img/s':>11} | "
             f"{'matmul GFLOP/s':>14} | {'% matmul':>8} | "
             f"{'best img/s':>10} | {'best %':>6} | {'peak MB':>7} | {'others %':>8} |"]
    lines.append("|" + "|".join("-" * (len(cell)) for cell in lines[0].split("|")[1:-1]) + "|")
    for item in result["rows"]:
        accuracy = f"{item['accuracy']:.2%}" if item.get("accuracy") is not None else "—"
        load = f"{item['load_seconds'] * 1000:.0f}" if "load_seconds" in item else "—"
        fraction = item.get("fraction_of_matmul_rate")
        best_fraction = item.get("best_fraction_of_matmul_rate")
        best = item["batched"].get("best_images_per_second")
        rate = (item.get("matmul") or {}).get("gflops")
        peak = item.get("peak_rss_mb")
        speedup = speedup_over_predict(result, item)
        disturbed = elsewhere(item.get("machine_load"))
        lines.append(
            f"| {item['artifact']:<30} | {fileio.human_size(item['bytes']):>9} | {accuracy:>8} | "
            f"{load:>7} | {item['single']['p50_ms']:>7.3f} | {item['single']['p90_ms']:>7.3f} | "
            f"{item['single']['p99_ms']:>7.3f} | "
            f"{(f'{speedup:,.0f}×' if speedup is not None else '—'):>9} | "
            f"{item['batched']['images_per_second']:>11,.0f} | "
            f"{(f'{rate:.1f}' if rate is not None else '—'):>14} | "
            f"{(f'{fraction:.1%}' if fraction is not None else '—'):>8} | "
            f"{(f'{best:,.0f}' if best is not None else '—'):>10} | "
            f"{(f'{best_fraction:.1%}' if best_fraction is not None else '—'):>6} | "
            f"{(f'{peak:.0f}' if peak is not None else '—'):>7} | "
            f"{(f'{disturbed:.0%}' if disturbed is not None else '—'):>8} |")
    return lines


def elsewhere(load: dict[str, float] | None) -> float | None:
    """Share of the machine's CPU time that went to other processes or other guests."""
    return None if load is None else load["others"] + load["steal"]


def load_summary(result: dict[str, Any]) -> str | None:
    """One line on how busy the machine was with other work during the run."""
    load = result.get("machine_load")
    if load is None:
        return None
    rows = [share for share in (elsewhere(row.get("machine_load")) for row in result["rows"])
            if share is not None]
    worst = f"; the most disturbed row {max(rows):.0%}" if rows else ""
    return (f"Other processes and other guests took {elsewhere(load):.0%} of the machine's CPU "
            f"time during the run (steal {load['steal']:.0%}){worst}: `others %` per row.")


def plot(result: dict[str, Any], reports: Path, echo: Callable[[str], None]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        echo("matplotlib not installed: skipping benchmark plots (pip install 'edgekit[train]')")
        return
    rows = result["rows"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for item in rows:
        if item.get("accuracy") is None:
            continue
        left.scatter(item["single"]["p50_ms"], 100 * item["accuracy"])
        left.annotate(item["artifact"], (item["single"]["p50_ms"], 100 * item["accuracy"]),
                      fontsize=7, xytext=(4, 2), textcoords="offset points")
    left.set_xscale("log")
    left.set_xlabel("single-image latency p50 (ms, log)")
    left.set_ylabel("test accuracy (%)")
    left.set_title("accuracy vs latency")
    left.grid(alpha=0.3)
    names = [item["artifact"] for item in rows]
    right.barh(names, [item["batched"]["images_per_second"] for item in rows])
    right.set_xscale("log")
    right.set_xlabel(f"batched throughput (images/s, batch {result['config']['batch_size']}, log)")
    right.set_title("throughput")
    right.invert_yaxis()
    figure.tight_layout()
    with fileio.atomic_path(reports / "benchmark.png") as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
