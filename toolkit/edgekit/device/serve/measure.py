"""How fast the server answers: requests/s and latency under concurrency, in one run.

Three servers, each one process of its own on a free loopback port — ``edgekit serve`` with
the options given (its defaults unless told), the same with micro-batching off (``max_batch``
1), and the server a user would write instead (:mod:`.baseline`: FastAPI, one ``async def``
endpoint, ``edgekit.runtime``, on uvicorn's defaults) — take turns under 1 and 16 concurrent
keep-alive clients posting multipart field ``image`` (:mod:`.loadgen`), in rounds, so a change
in the machine's load touches all of them. Each server logs as it would by default (edgekit's
request log, uvicorn's access log), to a file.
Every answer is checked: status 200 and the label ``edgekit.runtime`` gives the same image.
Where the time goes comes from the app's own ``time_ms`` (body reading and multipart parsing,
decoding and preparation, the hand-over to the model thread, the model) and, outside the app,
from the client's latency minus the app's total, next to a ``GET /healthz`` round trip.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit import errors, fileio
from edgekit.device import images as images_module
from edgekit.device.serve import loadgen
from edgekit.device.serve.config import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, DEFAULT_THREADS, ServeConfig
from edgekit.device.serve.served import ServedModel, open_model

REPORT = Path("reports") / "serve_benchmark.json"
EDGEKIT = "edgekit serve"
UNBATCHED = "edgekit serve, batching off"
WRAPPER = "FastAPI wrapper"
SERVERS = {EDGEKIT: "edgekit", UNBATCHED: "edgekit", WRAPPER: "wrapper"}
PHASES = ("read", "prepare", "queue", "model", "total")
START_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """``requests``: per server, per client count and per round (split among the clients)."""

    model: Path
    clients: tuple[int, ...] = (1, 16)
    requests: int = 320
    rounds: int = 3
    warmup: int = 50
    threads: int | None = DEFAULT_THREADS
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    workers: int = 1  # edgekit serve's processes (the wrapper always runs one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if self.requests < max(self.clients) or self.rounds < 1 or min(self.clients) < 1:
            raise ValueError("every client needs a request: requests >= clients, rounds >= 1")

    def server_config(self, name: str) -> ServeConfig:
        return ServeConfig(model=self.model, port=0, threads=self.threads,
                           max_batch=1 if name == UNBATCHED else self.max_batch,
                           batch_wait_ms=self.batch_wait_ms, workers=self.workers)


@dataclasses.dataclass
class _Server:
    name: str
    process: subprocess.Popen[str]
    host: str
    port: int
    log: Any
    workers: int = 1

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def run(config: MeasureConfig, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure, and return the report (see :func:`table`); nothing is written."""
    load_before = _load_average()
    served = open_model(config.model, config.threads)
    bodies, source = _test_images(served)
    expected, in_process = _reference(served, bodies)
    servers = [_start(name, config) for name in SERVERS]
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for server in servers:
            _load(server, bodies, 1, config.warmup)  # untimed: first calls, caches, allocations
        for round_number in range(config.rounds):
            progress(f"round {round_number + 1} of {config.rounds}")
            # Each round starts with the next server, so none always runs first (or last).
            turn = servers[round_number % len(servers):] + servers[:round_number % len(servers)]
            for clients in config.clients:
                for server in turn:
                    samples.setdefault((server.name, clients), []).append(
                        _timed(server, bodies, expected, clients, config.requests))
        floor = _healthz_round_trip(servers[0], config.requests)
    finally:
        for server in servers:
            server.stop()
    rows = [_row(name, clients, blocks) for (name, clients), blocks in samples.items()]
    return {
        "model": served.name, "precision": served.entry["precision"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    # runnable processes, 1-minute average: others' work shares these CPUs
                    "load_average_before": load_before, "load_average_after": _load_average()},
        "settings": {**dataclasses.asdict(config), "model": str(config.model)},
        "images": source,
        "rows": rows,
        "against_wrapper": _against_wrapper(rows, samples),
        "time_per_request": _where_time_goes(samples, floor, in_process),
    }


def _against_wrapper(rows: list[dict[str, Any]],
                     samples: dict[tuple[str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """edgekit serve's requests/s and p99 as multiples of the wrapper's, per client count: over
    the whole run, and the median of each round's ratio (the two measured minutes apart at
    most, so a change in the machine's load touches both; the steadier figure on a busy machine)."""
    found = {(row["server"], row["clients"]): row for row in rows}
    ratios = []
    for server, clients in found:
        if server != WRAPPER or (EDGEKIT, clients) not in found:
            continue
        ours, theirs = samples[(EDGEKIT, clients)], samples[(WRAPPER, clients)]
        per_round = [(len(mine["latencies"]) / mine["seconds"]) / (len(other["latencies"]) / other["seconds"])
                     for mine, other in zip(ours, theirs, strict=True)]
        ratios.append({
            "clients": clients,
            "requests_per_second_ratio": found[(EDGEKIT, clients)]["requests_per_second"]
            / found[(WRAPPER, clients)]["requests_per_second"],
            "median_round_ratio": float(np.median(per_round)),
            "round_ratios": per_round,
            "p99_ratio": found[(EDGEKIT, clients)]["p99_ms"] / found[(WRAPPER, clients)]["p99_ms"]})
    return ratios


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _test_images(served: ServedModel) -> tuple[list[bytes], dict[str, Any]]:
    """PNG files of the release's golden images (else seeded noise of the contract's size)."""
    golden = served.release / "golden.npz"
    if golden.is_file():
        with np.load(golden) as data:
            pixels, source = data["images"][:64], "golden.npz"
    else:
        shape = (64, *served.model.contract.shape)
        pixels, source = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), "noise"
    bodies = []
    for image in pixels:
        stream = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(stream, format="PNG")
        bodies.append(stream.getvalue())
    return bodies, {"source": source, "count": len(bodies),
                    "mean_bytes": round(float(np.mean([len(body) for body in bodies])))}


def _reference(served: ServedModel, bodies: list[bytes]) -> tuple[list[str], dict[str, float]]:
    """The labels edgekit.runtime gives each image, and its in-process cost per image."""
    contract = served.model.contract
    started = time.perf_counter()
    prepared = [images_module.prepare_bytes(body, "image", contract) for body in bodies]
    prepare_ms = (time.perf_counter() - started) * 1000 / len(bodies)
    pixels = np.stack([item.pixels for item in prepared])
    served.model.predict(pixels[:1])
    started = time.perf_counter()
    probabilities = np.concatenate([served.model.predict(pixels[index:index + 1])
                                    for index in range(len(pixels))])
    model_ms = (time.perf_counter() - started) * 1000 / len(bodies)
    labels = [served.model.labels[index] for index in probabilities.argmax(axis=1)]
    return labels, {"prepare_ms": prepare_ms, "model_ms": model_ms}


def _start(name: str, config: MeasureConfig) -> _Server:
    log = tempfile.TemporaryFile("w+")
    command = [sys.executable, "-m", "edgekit.device.serve.process", SERVERS[name],
               json.dumps(config.server_config(name).to_dict())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("http://"):
        process.wait(10)
        log.seek(0)
        raise errors.EdgekitError(f"the {name} server did not start: {log.read()[-1500:]}")
    host, port = line.strip().removeprefix("http://").rstrip("/").rsplit(":", 1)
    server = _Server(name, process, host, int(port), log,
                     config.workers if SERVERS[name] == "edgekit" else 1)
    deadline = time.monotonic() + START_SECONDS
    while _get(server, "/healthz")[0] != 200:
        if time.monotonic() > deadline or process.poll() is not None:
            server.stop()
            raise errors.EdgekitError(f"the {name} server never became ready (/healthz)")
        time.sleep(0.05)
    return server


def _get(server: _Server, path: str) -> tuple[int, bytes]:
    async def once() -> tuple[int, bytes]:
        connection = await loadgen.Connection.open(server.host, server.port)
        try:
            return await connection.send(loadgen.get_request(server.host, server.port, path))
        finally:
            await connection.close()

    return loadgen.run(once())


def _load(server: _Server, bodies: list[bytes], clients: int,
          total: int) -> tuple[list[loadgen.Reply], float]:
    requests = [loadgen.multipart_request(server.host, server.port, "/v1/predict", body, f"{index}.png")
                for index, body in enumerate(bodies)]
    return loadgen.run(loadgen.closed_loop(server.host, server.port, requests, clients, total))


def _timed(server: _Server, bodies: list[bytes], expected: list[str], clients: int,
           total: int) -> dict[str, Any]:
    before = _batching_counters(server)
    cpu_before = _cpu_seconds(server.process.pid)
    replies, seconds = _load(server, bodies, clients, total)
    cpu_after = _cpu_seconds(server.process.pid)
    after = _batching_counters(server)
    phases: dict[str, list[float]] = {phase: [] for phase in PHASES}
    errors_seen = wrong = 0
    for reply in replies:
        if reply.status != 200:
            errors_seen += 1
            continue
        answer = json.loads(reply.body)
        result = answer["results"][0] if "results" in answer else answer
        wrong += result["label"] != expected[reply.index]
        for phase in PHASES if "time_ms" in answer else ():
            phases[phase].append(answer["time_ms"][phase])
    calls = None if before is None or after is None else (after[0] - before[0], after[1] - before[1])
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {"latencies": [reply.seconds for reply in replies], "seconds": seconds,
            "errors": errors_seen, "wrong": wrong, "phases": phases, "calls": calls, "cpu_seconds": cpu}


def _cpu_seconds(pid: int) -> float | None:
    """The CPU time (user + system, all threads) a process and its live child processes (a
    server's workers) have used; None off Linux.

    What a server spends per request, unlike its requests/s, hardly moves with other work on
    the machine: the steadier measure of which server is leaner on a busy machine.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
    except (OSError, IndexError, ValueError):
        return None
    seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return seconds + sum(_cpu_seconds(child) or 0.0 for child in children)


def _batching_counters(server: _Server) -> tuple[int, int] | None:
    """Model calls and images so far; None for the wrapper, and for several workers (each
    keeps its own counts, and /v1/model answers from one of them)."""
    if SERVERS[server.name] != "edgekit" or server.workers > 1:
        return None
    batching = json.loads(_get(server, "/v1/model")[1])["batching"]
    return batching["batches"], batching["images"]


def _healthz_round_trip(server: _Server, total: int) -> float:
    request = loadgen.get_request(server.host, server.port, "/healthz")
    replies, _ = loadgen.run(loadgen.closed_loop(server.host, server.port, [request], 1, total))
    return float(np.median([reply.seconds for reply in replies]) * 1000)


def _row(name: str, clients: int, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = np.concatenate([block["latencies"] for block in blocks]) * 1000
    calls = [block["calls"] for block in blocks if block["calls"] is not None]
    return {
        "server": name, "clients": clients, "requests": len(latencies),
        "errors": sum(block["errors"] for block in blocks),
        "wrong_labels": sum(block["wrong"] for block in blocks),
        "requests_per_second": len(latencies) / sum(block["seconds"] for block in blocks),
        "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
        "images_per_model_call": (sum(images for _, images in calls) / max(1, sum(c for c, _ in calls))
                                  if calls else None),
        "app_mean_ms": _phase_means(blocks),
        "server_cpu_ms_per_request": (
            None if any(block["cpu_seconds"] is None for block in blocks)
            else 1000 * sum(block["cpu_seconds"] for block in blocks) / len(latencies)),
    }


def _phase_means(blocks: list[dict[str, Any]]) -> dict[str, float] | None:
    """Mean of each phase the app reported (None for the baseline, which reports none)."""
    values = {phase: [value for block in blocks for value in block["phases"][phase]] for phase in PHASES}
    return {phase: float(np.mean(found)) for phase, found in values.items()} if values["total"] else None


def _where_time_goes(samples: dict[tuple[str, int], list[dict[str, Any]]], floor_ms: float,
                     in_process: dict[str, float]) -> dict[str, Any]:
    """Mean per request on edgekit serve, one client at a time (and the wrapper's mean)."""
    clients = min(key[1] for key in samples)
    blocks = samples[(EDGEKIT, clients)]
    app = _phase_means(blocks)
    assert app is not None  # the edgekit server reports its phases

    def client_mean(name: str) -> float:
        found = samples[(name, clients)]
        return float(np.mean(np.concatenate([block["latencies"] for block in found]))) * 1000

    client_ms = client_mean(EDGEKIT)
    return {"server": EDGEKIT, "clients": clients, "client_mean_ms": client_ms, "app_ms": app,
            "outside_app_ms": client_ms - app["total"], "healthz_round_trip_ms": floor_ms,
            "wrapper_client_mean_ms": client_mean(WRAPPER), "in_process_ms": in_process}


def table(report: dict[str, Any]) -> str:
    """The report as a text table and a sentence on where a request's time goes."""
    lines = [f"{'server':<29}{'clients':>8}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'images/call':>13}{'CPU ms/req':>12}{'errors':>8}"]
    for row in report["rows"]:
        per_call, cpu = row["images_per_model_call"], row["server_cpu_ms_per_request"]
        lines.append(f"{row['server']:<29}{row['clients']:>8}{row['requests_per_second']:>12.0f}"
                     f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                     f"{'-' if per_call is None else f'{per_call:.1f}':>13}"
                     f"{'-' if cpu is None else f'{cpu:.2f}':>12}"
                     f"{row['errors'] + row['wrong_labels']:>8}")
    for ratio in report["against_wrapper"]:
        lines.append(f"{EDGEKIT} / {WRAPPER}, {ratio['clients']} client(s): "
                     f"{ratio['requests_per_second_ratio']:.2f}x the requests/s (median of the "
                     f"rounds {ratio['median_round_ratio']:.2f}x), "
                     f"{ratio['p99_ratio']:.2f}x the p99 latency")
    time_goes = report["time_per_request"]
    app = time_goes["app_ms"]
    machine = report["machine"]
    workers = report["settings"].get("workers", 1)
    if workers > 1:
        lines.append(f"{EDGEKIT} ran {workers} worker processes (--workers); the wrapper one.")
    lines.append(
        f"Per request ({time_goes['server']}, {time_goes['clients']} client, mean of "
        f"{time_goes['client_mean_ms']:.2f} ms): HTTP and framework outside the app "
        f"{time_goes['outside_app_ms']:.2f} ms (a GET /healthz round trip: "
        f"{time_goes['healthz_round_trip_ms']:.2f} ms), body and multipart {app['read']:.2f}, "
        f"decoding and preparation {app['prepare']:.2f}, hand-over to the model thread "
        f"{app['queue']:.2f}, model {app['model']:.2f} ms; the wrapper's mean: "
        f"{time_goes['wrapper_client_mean_ms']:.2f} ms.")
    lines.append(f"Machine: {machine['cpus']} CPUs, load average {machine['load_average_before']} before, "
                 f"{machine['load_average_after']} after (the servers and the clients share them).")
    return "\n".join(lines)


def write(report: dict[str, Any], release: Path) -> Path:
    return fileio.write_json(release / REPORT, report)
