"""What the machine can do and what else it is doing: the matmul rate, CPU time, memory.

psutil reads the machine-wide CPU times (user, system, idle, steal, ...) and this process's
CPU time and resident memory on every platform; the peak-memory mark (VmHWM) and its reset
(clear_refs) are Linux-only and read as unknown elsewhere.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import numpy as np
import psutil

LINUX = sys.platform.startswith("linux")


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


def fraction_of_peak(images_per_second: float, macs_per_image: int, gflops: float) -> float:
    """Achieved FLOP rate (2 FLOPs per multiply-accumulate) over the measured matmul rate."""
    return images_per_second * macs_per_image * 2.0 / (gflops * 1e9)


def own_cpu_seconds() -> float:
    """CPU seconds this process has used so far, all threads.

    ``time.process_time`` rather than psutil: psutil reads /proc/self/stat on Linux, whose
    10 ms clock ticks are too coarse for ``settle``'s 20 ms windows.
    """
    return time.process_time()


def cpu_times() -> dict[str, float] | None:
    """Machine-wide CPU seconds so far: busy, stolen and all (None where unreadable).

    Busy is everything but idle, I/O wait and steal: on Linux user + nice + system + irq +
    softirq, as /proc/stat counts them (guest time is already inside user and nice).
    """
    try:
        times = psutil.cpu_times()
    except (OSError, psutil.Error):
        return None
    fields = times._asdict()
    total = sum(value for name, value in fields.items() if name not in ("guest", "guest_nice"))
    steal = fields.get("steal", 0.0)
    return {"busy": total - fields.get("idle", 0.0) - fields.get("iowait", 0.0) - steal,
            "steal": steal, "total": total}


def cpu_snapshot() -> dict[str, float] | None:
    """Machine-wide CPU seconds and this process's own (children included), now."""
    machine_seconds = cpu_times()
    if machine_seconds is None:
        return None
    try:
        own = psutil.Process().cpu_times()
    except (OSError, psutil.Error):
        return None
    return {**machine_seconds,
            "own_seconds": own.user + own.system + own.children_user + own.children_system}


def machine_load(before: dict[str, float] | None,
                 after: dict[str, float] | None) -> dict[str, float] | None:
    """What else the machine did between two snapshots, as fractions of all its CPU time.

    ``others``: CPU time of every other process (busy seconds minus this process's own);
    ``steal``: time the hypervisor gave the virtual CPUs to other guests. Either one well
    above zero means that row was measured on a disturbed machine.
    """
    if before is None or after is None:
        return None
    capacity = after["total"] - before["total"]
    if capacity <= 0:
        return None
    busy = after["busy"] - before["busy"]
    own = after["own_seconds"] - before["own_seconds"]
    return {"cpu_seconds": capacity, "own": min(1.0, max(0.0, own / capacity)),
            "others": min(1.0, max(0.0, (busy - own) / capacity)),
            "steal": (after["steal"] - before["steal"]) / capacity}


def rss_mb() -> float | None:
    """This process's resident memory now, in MB."""
    try:
        return psutil.Process().memory_info().rss / (1024.0 * 1024.0)
    except (OSError, psutil.Error):
        return None


def reset_peak_memory() -> bool:
    """Reset the kernel's peak-RSS mark (Linux only: write 5 to clear_refs)."""
    if not LINUX:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """The peak resident memory since the last reset, in MB (Linux's VmHWM; psutil has none)."""
    if not LINUX:
        return None
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        return None
    return None


def description() -> dict[str, Any]:
    """The CPU (model name and instruction sets, from /proc/cpuinfo where there is one) and
    the versions of what was measured."""
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
