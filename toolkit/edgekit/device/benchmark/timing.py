"""How a model is timed: warm-up, single-image turns, batched throughput, and the pauses and
matmul measurements around them, on a shared, noisy machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from edgekit.device.benchmark import machine
from edgekit.device.benchmark.config import BenchmarkConfig

Measured = TypeVar("Measured")
SINGLE_ROUNDS = 3
MATMUL_BRACKET_REPEATS = 5


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
        before = machine.own_cpu_seconds()
        time.sleep(window_seconds)
        if machine.own_cpu_seconds() - before < 0.25 * window_seconds:
            break
    return time.perf_counter() - started


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
    before = machine.matmul_rate(config.matmul_size, MATMUL_BRACKET_REPEATS)
    settle()
    result = measure()
    settle()
    after = machine.matmul_rate(config.matmul_size, MATMUL_BRACKET_REPEATS)
    settle()
    return result, machine.pooled_rate([before, after])
