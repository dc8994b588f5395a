"""The diagnosis as a table (worst layer first) and as a plot of error along the network."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit import fileio

if TYPE_CHECKING:
    from edgekit.workstation.quantization.diagnose import Diagnosis
    from edgekit.workstation.quantization.measures import LayerError

SHOWN = 12


def _db(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value + 0.0:.1f}".replace("-0.0", "0.0")


def table(diagnosis: Diagnosis, shown: int = SHOWN) -> list[str]:
    """One artifact's layers ranked by the error each introduces, worst first."""
    lines = [f"{diagnosis.file} ({diagnosis.precision}): layers ranked by the error each "
             "introduces, worst first",
             "| rank | Keras layer | introduced NSR | local SQNR dB (worst ch.) | "
             "accumulated SQNR dB | worst channel SQNR dB (#) | RMS error, steps |",
             "|---|---|---|---|---|---|---|"]
    for rank, error in enumerate(diagnosis.ranked[:shown], 1):
        lines.append(_row(rank, error))
    if len(diagnosis.ranked) > shown:
        lines.append(f"({len(diagnosis.ranked) - shown} more layers in reports/layers.json)")
    return lines


def _row(rank: int, error: LayerError) -> str:
    local = "—" if error.local_sqnr_db is None else \
        f"{_db(error.local_sqnr_db)} ({_db(error.local_worst_channel_sqnr_db)})"
    steps = "—" if error.rmse_steps is None else f"{error.rmse_steps:.2f}"
    return (f"| {rank} | {error.label} | {error.score:.3g} | {local} | {_db(error.sqnr_db)} | "
            f"{_db(error.worst_channel_sqnr_db)} (#{error.worst_channel}) | {steps} |")


def plot(diagnoses: list[Diagnosis], path: Path) -> None:
    """Accumulated SQNR (whole tensor and worst channel) along the network, per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(diagnoses), 1, figsize=(9, 3.2 * len(diagnoses)),
                                squeeze=False)
    for axis, diagnosis in zip(axes[:, 0], diagnoses, strict=True):
        by_layer = {error.layer: error for error in diagnosis.ranked}
        rows = [by_layer[name] for name in diagnosis.order]
        positions = range(len(rows))
        capped = [min(row.sqnr_db, 80) for row in rows]
        worst = [min(row.worst_channel_sqnr_db, 80) for row in rows]
        axis.plot(positions, capped, marker="o", label="accumulated SQNR (tensor)")
        axis.plot(positions, worst, marker="s", label="accumulated SQNR (worst channel)")
        axis.set_xticks(list(positions), [row.label for row in rows], rotation=60, ha="right",
                        fontsize=7)
        axis.set_ylabel("dB (capped at 80)")
        axis.set_title(f"{diagnosis.file}: error along the network (validation images)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
