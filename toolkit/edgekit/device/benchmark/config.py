"""The benchmark's settings, shared by the timing, the rows and the Keras baselines."""

from __future__ import annotations

import dataclasses

REPORT_JSON = "benchmark.json"


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
