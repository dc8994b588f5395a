"""The benchmark's structure and arithmetic (never a speed: this machine is shared)."""

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.device import benchmark
from edgekit.device.benchmark import machine, timing


def test_percentiles_are_ordered_and_in_milliseconds():
    samples = list(np.random.default_rng(0).exponential(0.001, 500))
    result = benchmark.percentiles(samples)
    assert result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["p50_ms"] == pytest.approx(np.median(samples) * 1000)
    assert result["runs"] == 500


def test_fraction_of_matmul_rate():
    # 10,000 images/s x 4.6M MACs x 2 FLOPs = 92 GFLOP/s, over a 184 GFLOP/s machine: one half.
    assert benchmark.fraction_of_peak(10_000, 4_600_000, 184.0) == pytest.approx(0.5)


def test_matmul_rate_is_positive():
    result = benchmark.matmul_rate(128, repeats=2)
    assert result["gflops"] > 0 and result["size"] == 128
    assert result["gflops"] >= result["gflops_median"] > 0
    assert len(result["seconds"]) == 2


def test_rates_pool_every_product():
    first = benchmark.rate_of(1000, [0.02, 0.04, 0.05])
    assert first["gflops"] == pytest.approx(2e9 / 0.02 / 1e9)
    assert first["gflops_median"] == pytest.approx(2e9 / 0.04 / 1e9)
    pooled = benchmark.pooled_rate([first, benchmark.rate_of(1000, [0.01, 0.03])])
    assert pooled["best_seconds"] == 0.01 and pooled["median_seconds"] == 0.03
    assert pooled["seconds"] == [0.02, 0.04, 0.05, 0.01, 0.03]


def test_bracketed_measures_the_rate_before_and_after(monkeypatch):
    events = []
    monkeypatch.setattr(timing, "settle", lambda: events.append("settle"))
    monkeypatch.setattr(machine, "matmul_rate", lambda size, repeats: (
        events.append(f"matmul {size}x{repeats}"),
        benchmark.rate_of(size, [0.5] * repeats if len(events) < 3 else [0.25] * repeats))[1])
    result, rate = benchmark.bracketed(lambda: events.append("measure") or {"done": True},
                                       benchmark.BenchmarkConfig(matmul_size=100))
    assert result == {"done": True}
    assert events == ["settle", "matmul 100x5", "settle", "measure", "settle", "matmul 100x5",
                      "settle"]
    assert rate["best_seconds"] == 0.25 and len(rate["seconds"]) == 10


def test_settle_waits_for_spinning_threads_to_stop(monkeypatch):
    # This process's CPU clock: a busy worker for the first three windows, then idle.
    clock = iter([0.0, 0.02, 0.02, 0.04, 0.04, 0.06, 0.06, 0.061, 0.061, 0.061])
    monkeypatch.setattr(machine, "own_cpu_seconds", lambda: next(clock))
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: None)
    benchmark.settle(window_seconds=0.02)
    assert next(clock) == 0.061  # four windows read: three busy, one quiet, then it stopped
    # Threads that never stop spinning: it gives up after the limit.
    spinning = iter(range(10**9))
    monkeypatch.setattr(machine, "own_cpu_seconds", lambda: float(next(spinning)))
    assert 0.05 <= benchmark.settle(limit_seconds=0.05) < 0.5


def test_speedup_over_predict_is_a_ratio_of_p50s():
    rows = [{"artifact": "keras model.predict", "single": {"p50_ms": 80.0}},
            {"artifact": "model_int8.tflite", "single": {"p50_ms": 0.16}}]
    assert benchmark.speedup_over_predict({"rows": rows}, rows[1]) == pytest.approx(500.0)
    assert benchmark.speedup_over_predict({"rows": rows[1:]}, rows[1]) is None


def test_cpu_times_reads_busy_steal_and_total(monkeypatch):
    # psutil's Linux fields, in seconds (/proc/stat "cpu  1000 50 200 5000 30 0 10 40 0 0").
    linux = collections.namedtuple("linux", "user nice system idle iowait irq softirq steal "
                                            "guest guest_nice")
    monkeypatch.setattr(machine.psutil, "cpu_times",
                        lambda: linux(10.0, 0.5, 2.0, 50.0, 0.3, 0.0, 0.1, 0.4, 0.0, 0.0))
    # busy = user + nice + system + irq + softirq; total adds idle, iowait and steal (guest
    # time is already in user and nice).
    assert machine.cpu_times() == pytest.approx({"busy": 12.6, "steal": 0.4, "total": 63.3})
    # macOS has no steal, irq or iowait.
    darwin = collections.namedtuple("darwin", "user nice system idle")
    monkeypatch.setattr(machine.psutil, "cpu_times", lambda: darwin(10.0, 0.5, 2.0, 50.0))
    assert machine.cpu_times() == pytest.approx({"busy": 12.5, "steal": 0.0, "total": 62.5})


def test_machine_load_splits_the_cpu_time():
    before = {"busy": 0.0, "steal": 0.0, "total": 0.0, "own_seconds": 10.0}
    # 2 CPUs for 5 s = 10 CPU seconds: 6 busy, of which this process 4; 0.5 stolen.
    after = {"busy": 6.0, "steal": 0.5, "total": 10.0, "own_seconds": 14.0}
    load = benchmark.machine_load(before, after)
    assert load == pytest.approx({"cpu_seconds": 10.0, "own": 0.4, "others": 0.2, "steal": 0.05})
    assert benchmark.elsewhere(load) == pytest.approx(0.25)
    # Clock granularity can make our own CPU seconds exceed the machine's busy ticks.
    busy_self = dict(after, own_seconds=17.0)
    assert benchmark.machine_load(before, busy_self)["others"] == 0.0
    assert benchmark.machine_load(None, after) is None
    assert benchmark.machine_load(before, before) is None


def test_cpu_snapshot_of_this_machine():
    snapshot = benchmark.cpu_snapshot()
    if snapshot is None:
        pytest.skip("no machine-wide CPU times here")
    assert snapshot["total"] >= snapshot["busy"] > 0 and snapshot["own_seconds"] > 0
    later = benchmark.cpu_snapshot()
    assert later is not None and later["total"] >= snapshot["total"]


def test_int8_over_fp32_pairs_the_same_setting():
    def sweep_row(artifact, mode, threads, batch, rate):
        return {"artifact": artifact, "xnnpack": mode, "threads": threads, "batch_size": batch,
                "images_per_second": rate}
    rows = [sweep_row("model_fp32.onnx", "n/a", 1, 32, 100.0),
            sweep_row("model_int8.onnx", "n/a", 1, 32, 150.0),
            sweep_row("model_fp32.onnx", "n/a", 2, 32, 200.0),
            sweep_row("model_int8.onnx", "n/a", 2, 32, 100.0),
            sweep_row("model_fp32.tflite", "off", 1, 1, 50.0),
            sweep_row("model_int8.tflite", "off", 1, 1, 40.0)]
    summary = benchmark.int8_over_fp32(rows)
    assert [(item["runtime"], item["xnnpack"], item["faster"]) for item in summary] == [
        ("ONNX Runtime", "n/a", 1), ("LiteRT", "off", 0)]
    assert summary[0]["ratios"] == {(1, 32): 1.5, (2, 32): 0.5}
    assert benchmark.int8_summary_lines(rows) == [
        "- ONNX Runtime: int8 faster than fp32 in 1 of 2 settings (int8 / fp32 throughput 0.50–1.50)",
        "- LiteRT, XNNPACK off: int8 faster than fp32 in 0 of 1 settings (int8 / fp32 throughput 0.80–0.80)"]


def test_time_batched_counts_images():
    calls = []
    result = benchmark.time_batched(lambda batch: calls.append(len(batch)), np.zeros((100, 28, 28, 1)),
                                    benchmark.BenchmarkConfig(batch_size=10, batched_seconds=0.01))
    assert result["images"] == 10 * (len(calls) - 1)  # the first call is the warm-up
    assert result["images_per_second"] == pytest.approx(result["images"] / result["seconds"])
    assert result["calls"] == len(calls) - 1
    assert result["best_images_per_second"] >= result["median_images_per_second"] > 0


def test_released_benchmark_report(exported):
    report = json.loads((exported / "reports" / "benchmark.json").read_text())
    manifest = json.loads((exported / "manifest.json").read_text())
    rows = {row["artifact"]: row for row in report["rows"]}
    assert {entry["file"] for entry in manifest["artifacts"]} <= set(rows)
    assert {"keras model.predict", "keras direct call"} <= set(rows)
    assert report["macs_per_image"] == manifest["reference"]["macs_per_image"] > 0
    macs_of = {Path(item["folder"]).name: item["macs_per_image"] for item in report.get("compared", [])}
    for name, row in rows.items():
        single = row["single"]
        assert single["p50_ms"] <= single["p90_ms"] <= single["p99_ms"], name
        macs = macs_of[name.split("/")[0]] if "/" in name else report["macs_per_image"]
        # Each row's fraction is against the matmul rate measured around its own batches.
        assert row["matmul"]["gflops"] <= report["matmul"]["gflops"], name
        expected = (row["batched"]["images_per_second"] * macs * 2
                    / (row["matmul"]["gflops"] * 1e9))
        assert row["fraction_of_matmul_rate"] == pytest.approx(expected), name
        batched = row["batched"]
        assert batched["best_images_per_second"] >= batched["median_images_per_second"] > 0, name
        assert row["best_fraction_of_matmul_rate"] == pytest.approx(
            expected * batched["best_images_per_second"] / batched["images_per_second"]), name
        if name in {entry["file"] for entry in manifest["artifacts"]}:
            entry = next(e for e in manifest["artifacts"] if e["file"] == name)
            assert row["bytes"] == entry["bytes"]
            assert row["accuracy"] == entry["metrics"]["accuracy"]  # from the parity report
    # The released run says how busy the machine was with other work while it measured.
    assert 0.0 <= report["machine_load"]["others"] <= 1.0
    assert all("machine_load" in row for row in rows.values())
    assert (exported / "reports" / "benchmark.png").stat().st_size > 0


def test_benchmark_cli_on_a_copy(exported_copy):
    """On two of the six files, one per runtime (each row costs seconds of matmul brackets; the
    committed report, checked above, has all six)."""
    from conftest import keep_only, run_cli

    keep_only(exported_copy, "model_int8.tflite", "model_fp32.onnx")
    result = run_cli("benchmark", str(exported_copy), "--runs", "10", "--seconds", "0.1",
                     "--warmup", "0.05", "--no-keras")
    assert result.returncode == 0, result.stderr
    report = json.loads((exported_copy / "reports" / "benchmark.json").read_text())
    assert sorted(row["artifact"] for row in report["rows"]) == ["model_fp32.onnx", "model_int8.tflite"]
    assert report["config"]["warmup_seconds"] == 0.05
    for row in report["rows"]:  # 10 single-image runs in SINGLE_ROUNDS turns
        assert row["single"]["runs"] == 10 and row["single"]["rounds"] == benchmark.SINGLE_ROUNDS
    assert "model_int8.tflite" in result.stdout
    # Every row carries the rate measured before and after its batches (two blocks of
    # MATMUL_BRACKET_REPEATS products); the run's rate pools them all.
    for row in report["rows"]:
        assert len(row["matmul"]["seconds"]) == 2 * benchmark.MATMUL_BRACKET_REPEATS
    pooled = [second for row in report["rows"] for second in row["matmul"]["seconds"]]
    assert report["matmul"]["best_seconds"] == min(pooled)
    assert "matmul GFLOP/s" in result.stdout
    # How busy the machine was with other work, for the run and every row.
    for load in [report["machine_load"], *(row["machine_load"] for row in report["rows"])]:
        assert 0.0 <= load["others"] <= 1.0 and 0.0 <= load["own"] <= 1.0 and load["cpu_seconds"] > 0
    assert "others %" in result.stdout and "of the machine's CPU time during the run" in result.stdout


def test_benchmark_compares_another_release_in_the_same_run(exported_copy, tmp_path):
    """Two releases trimmed to two and three of the committed files (a row costs a few
    seconds of matmul brackets; six of each add nothing to the pairing checked here)."""
    from conftest import keep_only, run_cli

    compared = tmp_path / "compared" / "other"
    shutil.copytree(exported_copy, compared)
    keep_only(compared, "model_int8.tflite", "model_fp32.onnx", "model_fp16.tflite")
    keep_only(exported_copy, "model_int8.tflite", "model_fp32.onnx")
    result = run_cli("benchmark", str(exported_copy), "--compare", str(compared), "--runs", "10",
                     "--seconds", "0.1", "--warmup", "0.05", "--no-keras")
    assert result.returncode == 0, result.stderr
    report = json.loads((exported_copy / "reports" / "benchmark.json").read_text())
    manifest = json.loads((compared / "manifest.json").read_text())
    assert report["compared"] == [{
        "folder": str(compared), "architecture": manifest["reference"]["architecture"],
        "parameters": manifest["reference"]["parameters"],
        "macs_per_image": manifest["reference"]["macs_per_image"]}]
    names = [row["artifact"] for row in report["rows"]]
    assert sorted(names) == ["model_fp32.onnx", "model_int8.tflite", "other/model_fp16.tflite",
                             "other/model_fp32.onnx", "other/model_int8.tflite"]
    # Same-named files of the two releases, timed alternately: one pair each, ratio of p50s.
    pairs = report["paired_latency"]
    assert sorted(pair["file"] for pair in pairs) == sorted(row for row in names if "/" not in row)
    for pair in pairs:
        assert pair["compared"] == compared.name
        assert pair["single"]["runs"] == pair["compared_single"]["runs"] == 10
        assert pair["p50_ratio"] == pytest.approx(
            pair["single"]["p50_ms"] / pair["compared_single"]["p50_ms"])
    assert "timed call by call in turn" in result.stdout


def test_time_alternating_interleaves_the_calls():
    seen = []
    calls = [lambda image, name=name: seen.append(name) for name in "ab"]
    config = benchmark.BenchmarkConfig(single_runs=10, warmup_runs=2, warmup_seconds=0.0)
    first, second = benchmark.time_alternating(calls, np.zeros((3, 28, 28, 1), np.float32), config)
    assert first["runs"] == second["runs"] == 10
    # warm-up a b a b, then rounds in alternating order: a b, b a, a b, ...
    assert seen[:4] == list("abab")
    assert seen[4:10] == list("abbaab")
    assert seen.count("a") == seen.count("b") == 12


def test_benchmark_compare_with_a_missing_folder_is_an_error_line(exported_copy, tmp_path):
    from conftest import run_cli

    result = run_cli("benchmark", str(exported_copy), "--compare", str(tmp_path / "nowhere"),
                     "--runs", "10", "--seconds", "0.1", "--no-keras")
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "Traceback" not in result.stderr


def test_warm_up_lasts_a_count_and_a_time(monkeypatch):
    calls = []
    images = np.zeros((3, 28, 28, 1), np.uint8)
    counted = benchmark.BenchmarkConfig(warmup_runs=3, warmup_seconds=0.0)
    assert benchmark.warm_up(calls.append, images, counted) == 3 == len(calls)
    # A clock that advances 0.01 s per call: 0.05 s of warm-up is five calls.
    clock = {"now": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    timed = benchmark.BenchmarkConfig(warmup_runs=0, warmup_seconds=0.05)
    done = benchmark.warm_up(lambda image: clock.update(now=clock["now"] + 0.01), images, timed)
    assert done == 5
    with pytest.raises(ValueError):
        benchmark.BenchmarkConfig(warmup_seconds=-1.0)


def test_single_image_rounds_take_turns():
    seen, pauses = [], []
    calls = [lambda image, name=name: seen.append(name) for name in "ab"]
    config = benchmark.BenchmarkConfig(single_runs=10, warmup_runs=2, warmup_seconds=0.0)
    first, second = benchmark.time_single_in_rounds(
        calls, np.zeros((3, 28, 28, 1), np.uint8), config, rounds=3,
        pause=lambda: pauses.append(len(seen)))
    assert first["runs"] == second["runs"] == 10  # turns of 4, 4 and 2 calls
    # Each turn: a pause, 2 warm-up calls, the timed calls; the order reverses every round.
    assert "".join(seen) == "a" * 6 + "b" * 6 + "b" * 6 + "a" * 6 + "a" * 4 + "b" * 4
    assert pauses == [0, 6, 12, 18, 24, 28]


def test_benchmark_of_a_release_without_models_is_an_error_line(exported_copy):
    from conftest import run_cli

    manifest_path = exported_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"] = []
    manifest_path.write_text(json.dumps(manifest))
    before = sorted(path.name for path in exported_copy.rglob("*"))
    result = run_cli("benchmark", str(exported_copy), "--no-keras")
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "no exported models" in result.stderr
    assert "edgekit export" in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in exported_copy.rglob("*")) == before  # nothing written
