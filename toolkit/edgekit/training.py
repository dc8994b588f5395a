"""``edgekit train``: fit a Keras model on Fashion-MNIST (workstation only).

The test set is never touched here: a validation split carved (seeded, stratified) from
the training images drives early stopping, learning-rate decay and checkpoint selection.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import data, fileio, models
from edgekit.config import TrainConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"


def split_validation(split: data.Split, fraction: float, seed: int) -> tuple[data.Split, data.Split]:
    """Stratified, seeded split of the training images into (train, validation)."""
    rng = np.random.default_rng(seed)
    validation_indices = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        count = max(1, round(len(members) * fraction))
        validation_indices.append(rng.choice(members, size=count, replace=False))
    validation_mask = np.zeros(len(split), dtype=bool)
    validation_mask[np.concatenate(validation_indices)] = True
    train = data.Split(split.images[~validation_mask], split.labels[~validation_mask])
    validation = data.Split(split.images[validation_mask], split.labels[validation_mask])
    return train, validation


def make_dataset(split: data.Split, config: TrainConfig, training: bool) -> tf.data.Dataset:
    images = split.images.astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, split.labels.astype(np.int32)))
    if training:
        dataset = dataset.shuffle(len(split), seed=config.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(config.batch_size)
    if training and config.augment:
        augmenter = models.build_augmenter(config)
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


class HistoryRecorder(keras.callbacks.Callback):
    """Writes the per-epoch history (metrics, learning rate, time, images/s) after every epoch.

    Written atomically, so an interrupted run still leaves a readable history.
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


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def train(config: TrainConfig, output_dir: Path, data_dir: str | None = None,
          verbose: int | None = None) -> dict[str, Any]:
    """Train, save ``model.keras``, ``train_config.json`` and ``history.json`` in ``output_dir``."""
    output_dir = fileio.ensure_dir(output_dir)
    checkpoints = fileio.ensure_dir(output_dir / CHECKPOINT_DIR)
    dataset = data.load(data_dir)
    keras.utils.set_random_seed(config.seed)

    full_train = dataset.train.head(config.limit)
    train_split, validation_split = split_validation(full_train, config.validation_fraction, config.seed)
    model = models.build(config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    recorder = HistoryRecorder(output_dir / HISTORY_FILE, len(train_split))
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience,
                                      restore_best_weights=True, verbose=1),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=max(1, config.patience // 2), min_lr=1e-5),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "best.keras"), monitor="val_accuracy",
                                        save_best_only=True),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "last.keras")),
        recorder,
    ]
    print(f"Training {model.name} ({model.count_params():,} parameters) on {len(train_split):,} "
          f"images, validating on {len(validation_split):,}; data from {dataset.source}", flush=True)
    started = time.perf_counter()
    model.fit(
        make_dataset(train_split, config, training=True),
        validation_data=make_dataset(validation_split, config, training=False),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    seconds = time.perf_counter() - started
    validation_loss, validation_accuracy = model.evaluate(
        make_dataset(validation_split, config, training=False), verbose=0)
    best_epoch = int(np.argmax([epoch["val_accuracy"] for epoch in recorder.epochs])) + 1
    record = {
        "config": config.to_dict(),
        "parameters": int(model.count_params()),
        "train_images": len(train_split),
        "validation_images": len(validation_split),
        "epochs_run": len(recorder.epochs),
        "best_epoch": best_epoch,
        "validation_accuracy": float(validation_accuracy),
        "validation_loss": float(validation_loss),
        "train_seconds": round(seconds, 1),
        "dataset": str(dataset.source),
        "environment": environment(),
    }
    with fileio.atomic_path(output_dir / MODEL_FILE) as temporary:
        model.save(temporary)
    fileio.write_json(output_dir / CONFIG_FILE, record)
    return record


def load_record(model_path: Path) -> dict[str, Any] | None:
    """The training record saved beside a model, if there is one."""
    path = Path(model_path).parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
