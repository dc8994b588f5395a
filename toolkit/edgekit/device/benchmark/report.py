"""The benchmark report as text: the main table, the load summary, the paired latencies and
the sweep (the CLI prints them; scripts/update_readme.py puts them in the README)."""

from __future__ import annotations

from typing import Any

from edgekit import fileio


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


def paired_table(result: dict[str, Any]) -> list[str]:
    lines = ["| file | this release p50 ms | compared p50 ms | ratio (< 1: this release faster) |",
             "|---|---|---|---|"]
    for pair in result.get("paired_latency") or []:
        lines.append(f"| {pair['file']} vs {pair['compared']}/{pair['file']} | "
                     f"{pair['single']['p50_ms']:.3f} | {pair['compared_single']['p50_ms']:.3f} | "
                     f"{pair['p50_ratio']:.2f} |")
    return lines if len(lines) > 2 else []


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
