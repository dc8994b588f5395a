"""The benchmark's figure (matplotlib, so workstation-side): accuracy against single-image
latency, and batched throughput, per row of a benchmark report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit import fileio

PLOT_FILE = "benchmark.png"


def plot(result: dict[str, Any], reports: Path) -> None:
    """Write ``reports/benchmark.png`` for the report ``result``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with fileio.atomic_path(reports / PLOT_FILE) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
