"""What a training run keeps after every epoch: its history, and checkpoints to resume from.

Both are Keras callbacks, driven by the training loop of :mod:`edgekit.workstation.distribute`
the way ``model.fit`` would drive them. Every file is written atomically, so a run killed at
any moment leaves the previous complete version in place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekit import errors, fileio
from edgekit.workstation.config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.keras"
LAST_FILES = ("last-a.keras", "last-b.keras")
AVERAGE_FILES = ("average-a.npz", "average-b.npz")  # the weight average beside each last file
STATE_FILE = "state.json"


class HistoryRecorder(keras.callbacks.Callback):
    """Writes the per-epoch history (metrics, learning rate, time, images/s) after every epoch.

    ``train_images`` is the whole training split (every worker's shard), so images/s is the
    cluster's rate, comparable between one worker and several.
    """

    def __init__(self, path: Path, train_images: int, previous: list[dict[str, Any]] | None = None):
        super().__init__()
        self.path = path
        self.train_images = train_images
        self.epochs: list[dict[str, Any]] = list(previous or [])
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        record["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        record["epoch_seconds"] = round(seconds, 3)
        record["train_images_per_second"] = round(self.train_images / seconds, 1)
        self.epochs.append(record)
        fileio.write_json(self.path, {"epochs": self.epochs})


class ResumableCheckpoint(keras.callbacks.Callback):
    """Checkpoints that a killed run can resume from, written atomically after every epoch.

    ``best.keras`` holds the best model on validation accuracy; the latest model alternates
    between ``last-a.keras`` and ``last-b.keras`` (optimizer state included), and
    ``state.json`` — written last, so it is the commit point — names the one that is
    complete, with the epoch and the early-stopping and learning-rate-decay state.
    ``folder`` is where they are written; ``source`` is where a resumed run's are read
    (the same folder, except on a worker that is not the chief: it writes to scratch).
    """

    def __init__(self, folder: Path, config: TrainConfig, early_stopping: keras.callbacks.EarlyStopping,
                 reduce_lr: keras.callbacks.ReduceLROnPlateau | None,
                 state: dict[str, Any] | None = None, source: Path | None = None):
        super().__init__()
        self.folder = folder
        self.source = source or folder
        self.config = config
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.state = state
        self.best = -np.inf if state is None else state["best_val_accuracy"]
        self.average: Any = None  # the loop's WeightAverage, saved beside the last model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Runs after the two callbacks reset themselves (it is later in the list).
        if self.state is None:
            return
        stopping = self.state["early_stopping"]
        self.early_stopping.wait = stopping["wait"]
        self.early_stopping.best = stopping["best"]
        self.early_stopping.best_epoch = stopping["best_epoch"]
        best_model = keras.models.load_model(self.source / BEST_FILE, compile=False)
        self.early_stopping.best_weights = best_model.get_weights()
        decay = self.state["reduce_lr"]
        if self.reduce_lr is not None and decay is not None:
            self.reduce_lr.wait = decay["wait"]
            self.reduce_lr.best = decay["best"]
            self.reduce_lr.cooldown_counter = decay["cooldown_counter"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if float(logs.get("val_accuracy", -np.inf)) > self.best:
            self.best = float(logs["val_accuracy"])
            with fileio.atomic_path(self.folder / BEST_FILE) as temporary:
                self.model.save(temporary)
        slot = LAST_FILES[epoch % 2]
        with fileio.atomic_path(self.folder / slot) as temporary:
            self.model.save(temporary)
        average_file = None
        if self.average is not None:
            average_file = AVERAGE_FILES[epoch % 2]
            self.average.save(self.folder / average_file)
        fileio.write_json(self.folder / STATE_FILE, {
            "epoch": epoch + 1,
            "model_file": slot,
            "average_file": average_file,
            "stopped": bool(self.model.stop_training),
            "best_val_accuracy": self.best,
            "early_stopping": {"wait": self.early_stopping.wait,
                               "best": _plain(self.early_stopping.best),
                               "best_epoch": self.early_stopping.best_epoch},
            "reduce_lr": None if self.reduce_lr is None else {
                "wait": self.reduce_lr.wait, "best": _plain(self.reduce_lr.best),
                "cooldown_counter": self.reduce_lr.cooldown_counter},
            "config": self.config.to_dict(),
        })


def _plain(value: Any) -> float | None:
    return None if value is None else float(value)


def has_state(output_dir: Path) -> bool:
    return (output_dir / CHECKPOINT_DIR / STATE_FILE).is_file()


def read_state(output_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """The last committed epoch of the run in ``output_dir``, which must have ``config``."""
    path = output_dir / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        raise errors.EdgekitError(
            f"nothing to resume in {output_dir}: no {CHECKPOINT_DIR}/{STATE_FILE}. "
            "Start the run without --resume."
        )
    state = json.loads(path.read_text())
    saved = TrainConfig.from_dict(state["config"])
    if saved != config:
        differences = sorted(key for key, value in config.to_dict().items()
                             if saved.to_dict().get(key) != value)
        raise errors.EdgekitError(
            f"--resume needs the options of the interrupted run; these differ: "
            f"{', '.join(differences)}. Rerun with the same options (see "
            f"{path})."
        )
    return state
