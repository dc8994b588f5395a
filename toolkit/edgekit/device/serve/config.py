"""The server's settings: one frozen dataclass, its fields one to one with ``edgekit serve``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

MEBIBYTE = 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 0.0  # batch what is queued when the model is free; never wait
DEFAULT_MAX_IMAGES = 64
DEFAULT_TOP_K = 3
# Two runtime threads per model call (one where the machine has one CPU). The event loop is the
# server's bottleneck, and a model call holds it (LiteRT keeps the GIL while it computes): a
# second thread takes part of each call to the other CPU. Measured on 2 CPUs with this release's
# int8 file (docs/serve.md): a batch of 4 to 16 images ~40 % less time per image, a single image
# ~15 % less for ~20 % more CPU; the server ~15 % more requests/s at 16 clients. More threads
# than that only add hand-offs for models this small; --threads sets more for a large one.
DEFAULT_THREADS = min(2, os.cpu_count() or 1)
DEFAULT_DECODE_BUDGET_MPX = 40.0  # one picture at the decoding limit (images.MAX_PIXELS) at a time
DEFAULT_DECODE_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What one server process runs, where, and within which limits.

    ``max_batch`` 1 turns micro-batching off (every request is its own model call);
    ``batch_wait_ms`` is the longest a batch waits for requests still being read.
    ``decode_budget_mpx`` bounds the pixels (millions) being decoded at once across requests;
    an image waits at most ``decode_wait_s`` for its share before its request gets a 429.
    """

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = DEFAULT_THREADS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_images: int = DEFAULT_MAX_IMAGES
    decode_budget_mpx: float = DEFAULT_DECODE_BUDGET_MPX
    decode_wait_s: float = DEFAULT_DECODE_WAIT_S
    log_requests: bool = True
    workers: int = 1  # server processes sharing the port, each with its own model

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (0: any free port), not {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if not 0 < self.max_upload_mb <= 1024:
            raise ValueError(f"max upload must be above 0 and at most 1024 MiB, not {self.max_upload_mb}")
        if self.max_batch < 1:
            raise ValueError("max batch must be at least 1 (1: no batching)")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch wait must be 0..1000 ms, not {self.batch_wait_ms}")
        if self.max_images < 1:
            raise ValueError("max images per request must be at least 1")
        if not 0 < self.decode_budget_mpx <= 10_000:
            raise ValueError(f"the decode budget must be above 0 and at most 10000 Mpx, not "
                             f"{self.decode_budget_mpx}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be 1..64, not {self.workers}")
        if not 0 <= self.decode_wait_s <= 3600:
            raise ValueError(f"the decode wait must be 0..3600 s, not {self.decode_wait_s}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MEBIBYTE)

    @property
    def decode_budget_pixels(self) -> int:
        return max(1, int(self.decode_budget_mpx * 1_000_000))

    @property
    def batching(self) -> bool:
        return self.max_batch > 1

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": str(self.model)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ServeConfig:
        return cls(**payload)
