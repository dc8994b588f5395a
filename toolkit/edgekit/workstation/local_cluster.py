"""A multi-worker cluster on this machine: N processes of one command, each with its TF_CONFIG.

``edgekit train --local-workers N`` (or ``scripts/local_cluster.sh N -- COMMAND...``) picks N free
localhost ports, starts the command N times with ``TF_CONFIG`` naming worker 0..N-1, streams every
line a worker prints prefixed with ``[worker i]``, and stops them all — on Ctrl-C or SIGTERM, or
as soon as one fails — then reaps them, so no process outlives the launcher.

Each worker runs in a session (process group) of its own, so a Ctrl-C in the terminal reaches
the launcher alone and the launcher stops the workers in order: SIGTERM, then SIGKILL after
:data:`GRACE_SECONDS` (a worker stuck in a collective with a dead peer cannot act on SIGTERM).
A background job of a non-interactive shell starts with SIGINT ignored, and an ignored signal
stays ignored across exec; the workers get default SIGINT and SIGTERM dispositions back. On Linux
a worker also gets SIGKILL if the launcher itself dies (``PR_SET_PDEATHSIG``). No TensorFlow.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from edgekit import errors

GRACE_SECONDS = 5.0
HOST = "127.0.0.1"  # loopback only
_PR_SET_PDEATHSIG = 1


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            candidate = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(candidate)
            candidate.bind((HOST, 0))
        return [candidate.getsockname()[1] for candidate in sockets]
    finally:
        for candidate in sockets:
            candidate.close()


def tf_configs(ports: Sequence[int]) -> list[str]:
    """One TF_CONFIG per worker; worker 0 is the chief (the cluster names no chief)."""
    cluster = {"worker": [f"{HOST}:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(len(ports))]


def _child_setup() -> Callable[[], None]:
    """What each worker does between fork and exec (nothing that could take a lock)."""
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


def _stream(name: str, stream: IO[str], lock: threading.Lock, echo: Callable[[str], None]) -> None:
    for line in stream:
        with lock:
            echo(f"[{name}] {line.rstrip()}")


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Cluster:
    """The worker processes of one local run."""

    def __init__(self, processes: list[subprocess.Popen[str]]):
        self.processes = processes

    def poll_failure(self) -> tuple[int, int] | None:
        """(worker index, exit code) of the first worker that failed, if one has."""
        for index, process in enumerate(self.processes):
            code = process.poll()
            if code is not None and code != 0:
                return index, code
        return None

    def running(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM every live worker's process group, SIGKILL what is left after ``grace``."""
        try:
            self._signal_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C while stopping: no more grace
        finally:
            self._signal_all(signal.SIGKILL)
            for process in self.processes:
                process.wait()

    def _signal_all(self, number: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, number)  # the worker's own group (its session)


def run(workers: int, command: Sequence[str], echo: Callable[[str], None] = print,
        environ: dict[str, str] | None = None) -> None:
    """Run ``command`` as ``workers`` workers of a localhost cluster; raise if any fails."""
    ports = free_ports(workers)
    base = {**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"}
    setup = _child_setup()
    cluster = Cluster([])
    readers: list[threading.Thread] = []
    lock = threading.Lock()
    failure = None
    try:
        # Every worker starts before any reader thread: fork with no other thread running.
        for config in tf_configs(ports):
            cluster.processes.append(subprocess.Popen(
                list(command), env={**base, "TF_CONFIG": config}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True, preexec_fn=setup))
        echo(f"local cluster: {workers} worker(s) on {', '.join(f'{HOST}:{p}' for p in ports)} "
             f"(pids {', '.join(str(process.pid) for process in cluster.processes)}); "
             "worker 0 is the chief")
        for index, process in enumerate(cluster.processes):
            readers.append(threading.Thread(target=_stream, daemon=True,
                                            args=(f"worker {index}", process.stdout, lock, echo)))
            readers[-1].start()
        while cluster.running() and failure is None:
            failure = cluster.poll_failure()
            time.sleep(0.1)
        failure = failure or cluster.poll_failure()
    finally:
        # Also on Ctrl-C, SIGTERM (edgekit's handler raises KeyboardInterrupt) or our own error.
        cluster.stop()
        for reader in readers:
            reader.join(timeout=5)
    if failure is not None:
        index, code = failure
        others = " and stopped the others" if workers > 1 else ""
        raise errors.EdgekitError(
            f"worker {index} {_describe_exit(code)}{others}. Run the same command again to "
            "continue from the chief's last saved epoch.")


def _interrupt(number: int, frame: object) -> None:
    raise KeyboardInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgekit.workstation.local_cluster N -- COMMAND...``"""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) < 3 or not arguments[0].isdigit() or arguments[1] != "--" \
            or int(arguments[0]) < 1:
        print("usage: local_cluster N -- COMMAND [ARGUMENTS...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(int(arguments[0]), arguments[2:], echo=lambda line: print(line, flush=True))
    except errors.EdgekitError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted; every worker was stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
