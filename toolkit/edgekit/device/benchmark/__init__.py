"""``edgekit benchmark``: speed, size and memory of every artifact, against the machine's limit.

Everything is measured in one process and one run, so ratios between rows are fair on a
shared, noisy machine. Device-safe: the Keras baselines and the training measurement (which
need TensorFlow) and the plots (matplotlib) live in ``edgekit.workstation.benchmark_keras``
and ``benchmark_plot``, and ``edgekit benchmark`` adds them where those are installed.

``config`` holds the settings, ``timing`` how a model is timed, ``machine`` the matmul rate
and the CPU and memory readings, ``run`` the run itself and ``report`` its tables; the names
below are the package's API.
"""

from edgekit.device.benchmark.config import REPORT_JSON, BenchmarkConfig
from edgekit.device.benchmark.machine import (
    cpu_snapshot,
    fraction_of_peak,
    machine_load,
    matmul_rate,
    pooled_rate,
    rate_of,
)
from edgekit.device.benchmark.report import (
    elsewhere,
    int8_over_fp32,
    int8_summary_lines,
    load_summary,
    paired_table,
    speedup_over_predict,
    sweep_table,
    table,
)
from edgekit.device.benchmark.run import (
    SWEEP_BATCHES,
    KerasBaselines,
    TrainingThroughput,
    run,
)
from edgekit.device.benchmark.timing import (
    MATMUL_BRACKET_REPEATS,
    SINGLE_ROUNDS,
    bracketed,
    calls_per_turn,
    percentiles,
    settle,
    time_alternating,
    time_batched,
    time_single,
    time_single_in_rounds,
    warm_up,
)

__all__ = [
    "MATMUL_BRACKET_REPEATS", "REPORT_JSON", "SINGLE_ROUNDS", "SWEEP_BATCHES", "BenchmarkConfig",
    "KerasBaselines", "TrainingThroughput", "bracketed", "calls_per_turn", "cpu_snapshot",
    "elsewhere", "fraction_of_peak", "int8_over_fp32", "int8_summary_lines", "load_summary",
    "machine_load", "matmul_rate", "paired_table", "percentiles", "pooled_rate", "rate_of", "run",
    "settle", "speedup_over_predict", "sweep_table", "table", "time_alternating", "time_batched",
    "time_single", "time_single_in_rounds", "warm_up",
]
