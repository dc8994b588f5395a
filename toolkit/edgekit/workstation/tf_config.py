"""``TF_CONFIG``: the standard description of a tf.distribute cluster, read and checked.

A cluster scheduler (Kubernetes' TFJob, a SLURM script, :mod:`edgekit.workstation.local_cluster`)
sets it on every worker, e.g. for the second of two::

    {"cluster": {"worker": ["host-a:12345", "host-b:12345"]}, "task": {"type": "worker", "index": 1}}

The chief (the one worker that writes the model, history and checkpoints) is the ``chief`` task
when the cluster names one, else worker 0 — TensorFlow's own rule (``multi_worker_util.is_chief``).
No TensorFlow here: a bad ``TF_CONFIG`` is one error before TensorFlow is even imported, and
:func:`wait_for_peers` checks that every peer answers before TensorFlow's start-up, which waits
for missing peers without a time limit (its calls hold the interpreter, so no watchdog thread
could report it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Mapping

from edgekit import errors

ENV_VAR = "TF_CONFIG"
JOBS = ("chief", "worker")  # what MultiWorkerMirroredStrategy trains on (no ps, no evaluator)
EXAMPLE = ('{"cluster": {"worker": ["host-a:12345", "host-b:12345"]}, '
           '"task": {"type": "worker", "index": 0}}')


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """One task's view of the cluster: every job's addresses and which task this process is."""

    jobs: dict[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def peers(self) -> list[str]:
        return [address for job in JOBS for address in self.jobs.get(job, ())
                if address != self.address]

    @property
    def num_workers(self) -> int:
        return sum(len(self.jobs.get(job, ())) for job in JOBS)

    @property
    def name(self) -> str:
        return "chief" if self.task_type == "chief" else f"worker {self.task_index}"


def from_environment(environ: Mapping[str, str] | None = None) -> ClusterConfig:
    """The cluster ``TF_CONFIG`` describes; one :class:`EdgekitError` for anything wrong in it."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not text:
        raise errors.EdgekitError(
            f"--strategy multi-worker needs {ENV_VAR} on every worker, e.g. {EXAMPLE} "
            "(or try it on this machine with --local-workers N).")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise errors.EdgekitError(f"{ENV_VAR} is not valid JSON ({error}); expected e.g. "
                                  f"{EXAMPLE}") from None
    return parse(payload)


def parse(payload: object) -> ClusterConfig:
    cluster = payload.get("cluster") if isinstance(payload, dict) else None
    task = payload.get("task") if isinstance(payload, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _bad('needs a "cluster" object and a "task" object')
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise _bad(f"names jobs edgekit cannot train with ({', '.join(unknown)}): "
                   "MultiWorkerMirroredStrategy takes a \"worker\" list and at most one \"chief\"")
    jobs: dict[str, tuple[str, ...]] = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise _bad(f'cluster "{job}" must be a non-empty list of "host:port" addresses')
        jobs[job] = tuple(_address(job, address) for address in addresses)
    if len(jobs.get("chief", ())) > 1:
        raise _bad("names more than one chief")
    everyone = [address for addresses in jobs.values() for address in addresses]
    if len(set(everyone)) != len(everyone):
        raise _bad("lists an address twice: every task needs its own host:port")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in jobs:
        raise _bad(f'task type {json.dumps(task_type)} is not a job of the cluster '
                   f'({", ".join(sorted(jobs))})')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise _bad(f"task index {json.dumps(index)} is out of range: the cluster has "
                   f"{len(jobs[task_type])} {task_type} address(es), indices 0 to "
                   f"{len(jobs[task_type]) - 1}")
    return ClusterConfig(jobs, task_type, index)


def _address(job: str, address: object) -> str:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(f'cluster "{job}" entry {json.dumps(address)} is not "host:port"')
    return str(address)


def _bad(what: str) -> errors.EdgekitError:
    return errors.EdgekitError(f"{ENV_VAR} {what}. Expected e.g. {EXAMPLE}")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_peers(config: ClusterConfig, timeout: float,
                   echo: Callable[[str], None] = print) -> None:
    """Wait until every peer accepts a TCP connection, or raise after ``timeout`` seconds.

    Meanwhile this task listens on its own port (which TensorFlow's server takes over next),
    so the peers doing the same check see it too; a port already taken means two tasks claim
    the same address (the same index twice) or something else holds it.
    """
    _, port = _split(config.address)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as error:
        listener.close()
        raise errors.EdgekitError(
            f"{config.name} cannot listen on port {port} ({config.address} in {ENV_VAR}): "
            f"{error.strerror or error}. Is another task using the same index, or another "
            "program the port?") from None
    listener.listen(16)
    waiting = list(config.peers)
    deadline = time.monotonic() + timeout
    try:
        if waiting:
            echo(f"{config.name} of {config.num_workers}: waiting up to {timeout:g} s for "
                 f"{', '.join(waiting)}")
        while waiting:
            waiting = [peer for peer in waiting if not _answers(peer)]
            if waiting and time.monotonic() > deadline:
                raise errors.EdgekitError(
                    f"{config.name}: no answer from {', '.join(waiting)} within {timeout:g} s. "
                    f"Start every worker of {ENV_VAR} (within --cluster-timeout of each other) "
                    "and check the addresses and firewalls.")
            if waiting:
                time.sleep(0.2)
    finally:
        listener.close()


def _answers(address: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(_split(address), timeout=1.0):
        return True
    return False
