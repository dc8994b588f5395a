"""Training on tf.distribute: two workers on localhost, a worker killed, bad TF_CONFIGs, no orphans.

The workers are real processes started by ``edgekit train --local-workers 2`` (or the launcher
module on a stand-in command), on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import (
    ROOT,
    assert_stopped_with_one_line,
    has_module,
    requires_tensorflow,
    run_cli,
    start_edgekit,
)

pytestmark = pytest.mark.slow

SLICE = ["--limit", "2000", "--batch-size", "128"]
# Without dropout and augmentation, N workers train on the one-worker run's global batches with
# no random draw of their own: the runs differ only by float rounding (summation order of the
# all-reduce); measured here: identical to 4 decimals. With them, each worker draws for its own
# share of the batch, and 2-epoch runs on this slice differed by up to 1.5 pp over 4 seeds
# (docs/distributed.md): the comparison turns them off to hold a tolerance of float rounding.
DETERMINISTIC = ["--no-augment", "--config"]  # + a JSON with dropout_rate 0
ACCURACY_TOLERANCE = 0.01  # two of the 201 validation images
BAD_CONFIG_SECONDS = 60  # a bad TF_CONFIG is one Error line within this (start-up included)


def leftovers(token: str) -> list[str]:
    """Processes (other than this one) whose command line mentions ``token``."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if (process.info["pid"] != os.getpid() and token in cmdline
                and process.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(f"{process.info['pid']}: {cmdline[:200]}")
    return found


class Lines:
    """Collects a process' stdout lines on a thread, so a test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def wait_for(self, predicate, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no such line within {seconds} s:\n{''.join(self.lines)[-3000:]}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def worker_pids(line: str) -> list[int]:
    """The pids of 'local cluster: ... (pids 12, 13); ...'."""
    return [int(pid) for pid in line.split("(pids ")[1].split(")")[0].split(", ")]


@requires_tensorflow
def test_two_workers_match_one_and_the_chief_exports(tmp_path):
    one, two, scratch = tmp_path / "one", tmp_path / "two", tmp_path / "scratch"
    scratch.mkdir()
    no_dropout = tmp_path / "no-dropout.json"
    # With a weight average: its update runs in the cross-replica context of every strategy.
    no_dropout.write_text(json.dumps({"dropout_rate": 0.0, "ema_decay": 0.9}))
    options = [*SLICE, "--epochs", "2", *DETERMINISTIC, str(no_dropout)]
    single = run_cli("train", *options, "--strategy", "mirrored", "--output-dir", str(one))
    assert single.returncode == 0, single.stderr[-2000:]
    started = time.monotonic()
    pair = run_cli("train", *options, "--local-workers", "2", "--output-dir", str(two),
                   env={"TMPDIR": str(scratch)})
    assert pair.returncode == 0, pair.stdout[-3000:] + pair.stderr[-2000:]
    assert time.monotonic() - started < 120
    assert "[worker 0] saved" in pair.stdout and "[worker 1] done" in pair.stdout
    assert not leftovers(str(two)), "a worker outlived the launcher"
    assert list(scratch.glob("edgekit-*")) == [], "a worker's scratch folder was left behind"

    record = json.loads((two / "train_config.json").read_text())
    reference = json.loads((one / "train_config.json").read_text())
    assert record["distribution"] == {"strategy": "multi-worker", "workers": 2, "replicas": 2,
                                      "global_batch_size": 128, "per_replica_batch_size": 64}
    assert reference["distribution"]["replicas"] == 1
    # --limit slices before sharding: both runs train and validate on the same images.
    assert record["train_images"] + record["validation_images"] == 2000
    assert (record["train_images"], record["validation_images"]) == (
        reference["train_images"], reference["validation_images"])
    history = json.loads((two / "history.json").read_text())["epochs"]
    assert [epoch["epoch"] for epoch in history] == [1, 2]
    assert all(epoch["train_images_per_second"] > 0 for epoch in history)
    assert record["validation_accuracy"] > 0.5  # it learned (chance: 0.1)
    assert abs(record["validation_accuracy"] - reference["validation_accuracy"]) <= ACCURACY_TOLERANCE
    if record["weights"]["kept"] == reference["weights"]["kept"]:  # else a near tie split them
        assert record["validation_loss"] == pytest.approx(reference["validation_loss"], rel=1e-3)
    averaged = [run["weights"]["average_validation_accuracy"] for run in (record, reference)]
    assert abs(averaged[0] - averaged[1]) <= ACCURACY_TOLERANCE

    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(two / "model.keras"), "--output-dir", str(release),
                       "--format", "tflite", "--quantize", "none", "--no-explanations")
    assert exported.returncode == 0, exported.stderr[-2000:]
    verified = run_cli("verify", str(release))
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


@requires_tensorflow
def test_a_killed_worker_and_a_restart_resume_from_the_last_epoch(tmp_path):
    folder, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    environment = {**os.environ, "TMPDIR": str(scratch)}
    arguments = ["train", *SLICE, "--epochs", "3", "--patience", "10", "--local-workers", "2",
                 "--output-dir", str(folder)]
    launcher = start_edgekit(*arguments, env=environment)
    lines = Lines(launcher)
    pids = worker_pids(lines.wait_for(lambda line: line.startswith("local cluster:"), 60))
    lines.wait_for(lambda line: line.startswith("[worker 0] epoch 1/3"), 120)
    state = folder / "checkpoints" / "state.json"
    deadline = time.monotonic() + 30
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pids[1], signal.SIGKILL)  # worker 1, mid-way through epoch 2
    assert launcher.wait(timeout=60) == 1
    stderr = launcher.stderr.read()
    assert "Error: worker 1 was killed by SIGKILL and stopped the others" in stderr
    assert not leftovers(str(folder)), "a worker outlived the launcher"
    assert all(not psutil.pid_exists(pid) for pid in pids)
    interrupted = json.loads(state.read_text())
    assert interrupted["epoch"] == 1, "the kill came too late: epoch 2 was already saved"
    assert not (folder / "model.keras").exists()

    # What the killed worker had in its scratch folder (TensorFlow's autograph leaves files too).
    assert len(list(scratch.glob("edgekit-*"))) == 1

    resumed = run_cli(*arguments, env={"TMPDIR": str(scratch)})  # the same command again
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert "resuming after epoch 1" in resumed.stdout
    record = json.loads((folder / "train_config.json").read_text())
    history = json.loads((folder / "history.json").read_text())["epochs"]
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]
    assert record["resumed_at_epoch"] == 1 and record["epochs_run"] == 3
    # Learning continued from the checkpoint: random weights would start epoch 2 at epoch 1's
    # training loss (about 1.6 here; after it, about 1.0). Validation accuracy at 2-3 epochs
    # swings by several points from epoch to epoch, so it is not the measure.
    assert history[1]["loss"] < 0.85 * history[0]["loss"]
    assert not leftovers(str(folder))
    assert list(scratch.glob("edgekit-*")) == [], "the restarted worker 1 left its scratch folder"


def _tf_config(kind: str) -> str:
    from edgekit.workstation import local_cluster

    port0, port1 = local_cluster.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]}
    return {
        "malformed": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": ',
        "wrong-index": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}),
        "no-cluster": json.dumps({"task": {"type": "worker", "index": 0}}),
        # Worker 0 of two, and nobody starts worker 1.
        "unreachable-peer": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}),
    }[kind]


@pytest.mark.parametrize("kind, message", [
    ("malformed", "Error: TF_CONFIG is not valid JSON"),
    ("wrong-index", "Error: TF_CONFIG task index 2 is out of range"),
    ("no-cluster", "Error: TF_CONFIG needs a \"cluster\" object"),
    ("unreachable-peer", "Error: worker 0: no answer from 127.0.0.1:"),
], ids=["malformed", "wrong-index", "no-cluster", "unreachable-peer"])
def test_a_bad_tf_config_is_one_error_line(tmp_path, kind, message):
    """Checked before TensorFlow is imported; a missing peer after --cluster-timeout (5 s)."""
    if kind == "unreachable-peer" and not has_module("tensorflow"):
        pytest.skip("needs the train extra (TensorFlow)")
    started = time.monotonic()
    process = start_edgekit("train", "--strategy", "multi-worker", "--limit", "200", "--epochs", "1",
                            "--cluster-timeout", "5", "--output-dir", str(tmp_path / "run"),
                            env={**os.environ, "TF_CONFIG": _tf_config(kind)})
    assert_stopped_with_one_line(process, 1, message, seconds=BAD_CONFIG_SECONDS)
    assert time.monotonic() - started < BAD_CONFIG_SECONDS
    assert not (tmp_path / "run" / "model.keras").exists()


STAND_IN = ("import json, os, signal, sys, time; "
            "index = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
            "print('dispositions', signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
            "signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True); "
            "sys.exit(3) if index == int(sys.argv[1]) else time.sleep(120)")


def _launch(fail_index: int, marker: str, ignore_sigint: bool) -> subprocess.Popen[str]:
    """The launcher on a stand-in worker; ``ignore_sigint``: as a script's background job."""
    disposition = signal.SIG_IGN if ignore_sigint else signal.SIG_DFL
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit.workstation.local_cluster", "2", "--",
         sys.executable, "-c", STAND_IN, str(fail_index), marker],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))


def test_the_launcher_stops_every_worker_when_one_fails(tmp_path):
    marker = f"marker-{tmp_path.name}"
    launcher = _launch(1, marker, ignore_sigint=True)
    stdout, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 1
    assert "Error: worker 1 exited with code 3 and stopped the others" in stderr
    # Started by a parent that ignores SIGINT, the workers still get default dispositions.
    assert stdout.count("dispositions True True") == 2, stdout
    assert not leftovers(marker)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_the_launcher_stops_every_worker_on_a_signal(tmp_path, signal_name):
    """SIGTERM (a scheduler), or SIGINT (Ctrl-C in a terminal: the launcher's group only)."""
    marker = f"marker-{tmp_path.name}"
    launcher = _launch(-1, marker, ignore_sigint=signal_name == "SIGTERM")  # nobody fails
    lines = Lines(launcher)
    pids = worker_pids(lines.wait_for(lambda line: line.startswith("local cluster:"), 30))
    for index in (0, 1):
        lines.wait_for(lambda line, index=index: f"[worker {index}] dispositions" in line, 30)
    launcher.send_signal(getattr(signal, signal_name))
    assert launcher.wait(timeout=30) == 130
    assert "Error: interrupted; every worker was stopped." in launcher.stderr.read()
    assert all(not psutil.pid_exists(pid) for pid in pids)
    assert not leftovers(marker)


@requires_tensorflow
def test_the_loop_is_fit(tmp_path):
    """distribute.Loop on the default strategy computes what model.fit computes.

    ``edgekit tune`` scores trials with fit; ``edgekit train`` trains with the loop: one epoch of
    each from the same weights on the same batches ends at the same loss and weights (to float
    rounding, which Adam's normalisation magnifies for near-zero gradients).
    """
    import functools

    import keras
    import numpy as np
    import tensorflow as tf

    from edgekit.device import datasets
    from edgekit.workstation import distribute, models, training
    from edgekit.workstation.config import TrainConfig

    config = TrainConfig.for_architecture("edge", limit=600, epochs=1, batch_size=64,
                                          augment=False, dropout_rate=0.0)
    dataset = training.open_data(datasets.DataSpec(), config)
    train_split, validation_split = training.train_and_validation(dataset, config)

    def fresh() -> keras.Model:
        keras.utils.set_random_seed(1)
        model = models.build(config, dataset.contract)
        training.compile_model(model, config, steps_per_epoch=9)
        return model

    fitted = fresh()
    fit_history = fitted.fit(training.make_dataset(train_split, config, True, 10), epochs=1,
                             verbose=0, shuffle=False).history
    fit_validation = fitted.evaluate(training.make_dataset(validation_split, config, False, 10),
                                     verbose=0, return_dict=True)
    looped = fresh()
    loop = distribute.Loop(distribute.Distribution("default", tf.distribute.get_strategy()), looped,
                           config.label_smoothing, config.batch_size)
    pipeline = functools.partial(training.make_dataset, config=config, num_classes=10)
    keras.utils.set_random_seed(1)
    metrics = loop.train_epoch(loop.distribute(train_split, functools.partial(pipeline, training=True),
                                               training=True))
    validation = loop.evaluate(loop.distribute(validation_split,
                                               functools.partial(pipeline, training=False),
                                               training=False))
    assert metrics["loss"] == pytest.approx(fit_history["loss"][0], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(fit_history["accuracy"][0], abs=1e-6)
    assert validation["loss"] == pytest.approx(fit_validation["loss"], rel=1e-4)
    assert validation["accuracy"] == pytest.approx(fit_validation["accuracy"], abs=1e-6)
    difference = max(float(np.max(np.abs(a - b)))
                     for a, b in zip(fitted.get_weights(), looped.get_weights(), strict=True))
    assert difference < 2e-3
