"""``edgekit train``: fit a Keras model on Fashion-MNIST (workstation only).

The test set is never touched here: a validation split carved (seeded, stratified) from
the training images drives early stopping, learning-rate decay and checkpoint selection.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import contract as contract_module
from edgekit import errors, fileio
from edgekit.contract import InputContract
from edgekit.device import datasets
from edgekit.workstation import fashion_download, models
from edgekit.workstation.config import TrainConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.keras"
LAST_FILES = ("last-a.keras", "last-b.keras")
STATE_FILE = "state.json"
DATASET_FILE = "dataset.json"  # the data spec, contract and split (file lists) of the run


def split_validation(split: datasets.Split, fraction: float,
                     seed: int) -> tuple[datasets.Split, datasets.Split]:
    """Stratified, seeded split of the training images into (train, validation)."""
    rng = np.random.default_rng(seed)
    validation_indices = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        count = max(1, round(len(members) * fraction))
        validation_indices.append(rng.choice(members, size=count, replace=False))
    validation_mask = np.zeros(len(split), dtype=bool)
    validation_mask[np.concatenate(validation_indices)] = True
    train = datasets.Split(split.images[~validation_mask], split.labels[~validation_mask])
    validation = datasets.Split(split.images[validation_mask], split.labels[validation_mask])
    return train, validation


def train_and_validation(dataset: datasets.Dataset,
                         config: TrainConfig) -> tuple[datasets.Split, datasets.Split]:
    """The dataset's own validation split, or one carved (seeded, stratified) from train."""
    full_train = dataset.train.head(config.limit)
    if dataset.validation is not None and len(dataset.validation):
        return full_train, dataset.validation
    return split_validation(full_train, config.validation_fraction, config.seed)


def open_data(spec: datasets.DataSpec, config: TrainConfig,
              record: dict[str, Any] | None = None) -> datasets.Dataset:
    """The training data; ``record`` (a resumed run's dataset.json) replays its split."""
    contract = None
    if record is not None and "contract" in record:
        contract = InputContract.from_dict(record["contract"], record["labels"])
    dataset = spec.open(download=fashion_download.download, seed=config.seed, record=record,
                        contract=contract)
    for warning in dataset.warnings:
        print(f"warning: {warning}", flush=True)
    return dataset





def make_dataset(split: datasets.Split, config: TrainConfig, training: bool,
                 num_classes: int) -> tf.data.Dataset:
    images = split.images.astype(np.float32)
    # One-hot labels, so that label smoothing (CategoricalCrossentropy) is available.
    targets = np.eye(num_classes, dtype=np.float32)[split.labels]
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
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


class ResumableCheckpoint(keras.callbacks.Callback):
    """Checkpoints that a killed run can resume from, written atomically after every epoch.

    ``best.keras`` holds the best model on validation accuracy; the latest model alternates
    between ``last-a.keras`` and ``last-b.keras`` (optimizer state included), and
    ``state.json`` — written last, so it is the commit point — names the one that is
    complete, with the epoch and the early-stopping and learning-rate-decay state.
    """

    def __init__(self, folder: Path, config: TrainConfig, early_stopping: keras.callbacks.EarlyStopping,
                 reduce_lr: keras.callbacks.ReduceLROnPlateau | None,
                 state: dict[str, Any] | None = None):
        super().__init__()
        self.folder = folder
        self.config = config
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.state = state
        self.best = -np.inf if state is None else state["best_val_accuracy"]

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Runs after the two callbacks reset themselves (it is later in the list).
        if self.state is None:
            return
        stopping = self.state["early_stopping"]
        self.early_stopping.wait = stopping["wait"]
        self.early_stopping.best = stopping["best"]
        self.early_stopping.best_epoch = stopping["best_epoch"]
        best_model = keras.models.load_model(self.folder / BEST_FILE, compile=False)
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
        fileio.write_json(self.folder / STATE_FILE, {
            "epoch": epoch + 1,
            "model_file": slot,
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


def read_state(output_dir: Path, config: TrainConfig) -> dict[str, Any]:
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


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    learning_rate: Any = config.learning_rate
    if config.schedule == "cosine":
        # Short runs (tests, --epochs 1) keep at least one epoch of decay after the warm-up.
        warmup = min(config.warmup_epochs, config.epochs - 1) * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
            decay_steps=max(1, config.epochs * steps_per_epoch - warmup),
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
            alpha=0.01)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])


def train(config: TrainConfig, output_dir: Path, spec: datasets.DataSpec | None = None,
          verbose: int | None = None, resume: bool = False) -> dict[str, Any]:
    """Train, save ``model.keras``, ``train_config.json`` and ``history.json`` in ``output_dir``.

    With ``resume``, continue an interrupted run from its last completed epoch: model and
    optimizer state, epoch counter, early-stopping and learning-rate-decay state.
    """
    output_dir = fileio.ensure_dir(output_dir)
    checkpoints = fileio.ensure_dir(output_dir / CHECKPOINT_DIR)
    state = read_state(output_dir, config) if resume else None
    spec = spec or datasets.DataSpec()
    recorded = output_dir / DATASET_FILE
    dataset = open_data(spec, config, json.loads(recorded.read_text())
                        if state is not None and recorded.is_file() else None)
    contract = dataset.contract
    if state is None:
        fileio.write_json(recorded, {"spec": spec.to_dict(), "contract": contract.to_dict(),
                                     "labels": list(contract.labels), **dataset.record})
    initial_epoch = 0 if state is None else int(state["epoch"])
    # Seeded per starting epoch: a resumed run does not replay the first epochs' order.
    keras.utils.set_random_seed(config.seed + initial_epoch)

    train_split, validation_split = train_and_validation(dataset, config)
    classes = contract.num_classes
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    if state is None:
        model = models.build(config, contract)
        compile_model(model, config, steps_per_epoch)
        previous: list[dict[str, Any]] = []
    else:
        model = keras.models.load_model(checkpoints / state["model_file"], compile=True)
        history_path = output_dir / HISTORY_FILE
        previous = json.loads(history_path.read_text())["epochs"] if history_path.is_file() else []
        previous = [record for record in previous if record["epoch"] <= initial_epoch]
    recorder = HistoryRecorder(output_dir / HISTORY_FILE, len(train_split), previous)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=config.patience, restore_best_weights=True, verbose=1)
    reduce_lr = None
    if config.schedule == "plateau":
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-5)
    callbacks = [early_stopping, *([reduce_lr] if reduce_lr else []), recorder,
                 ResumableCheckpoint(checkpoints, config, early_stopping, reduce_lr, state)]
    finished = state is not None and (state["stopped"] or initial_epoch >= config.epochs)
    print(f"Training {model.name} ({model.count_params():,} parameters) on {len(train_split):,} "
          f"images, validating on {len(validation_split):,}; data from {dataset.source}"
          + (f"; resuming after epoch {initial_epoch}" if state is not None else ""), flush=True)
    started = time.perf_counter()
    if finished:
        model = keras.models.load_model(checkpoints / BEST_FILE, compile=True)
    else:
        model.fit(
            make_dataset(train_split, config, True, classes),
            validation_data=make_dataset(validation_split, config, False, classes),
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            callbacks=callbacks,
            verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
        )
    seconds = time.perf_counter() - started
    seconds += sum(record["epoch_seconds"] for record in previous)
    validation_loss, validation_accuracy = model.evaluate(
        make_dataset(validation_split, config, False, classes), verbose=0)
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
        "resumed_at_epoch": initial_epoch if state is not None else None,
        "dataset": str(dataset.source),
        "data": spec.to_dict(),
        "contract": contract.to_dict(),
        "labels": list(contract.labels),
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


def data_for_model(model_path: Path, model: Any, spec: datasets.DataSpec | None,
                   splits: tuple[str, ...] = ("train", "validation", "test")) -> datasets.Dataset:
    """The dataset a model is measured on, prepared to the model's own input.

    A model trained by edgekit has its run's dataset.json beside it: without ``--data`` (or
    with the same folder) the recorded split is replayed, so test images stay test images.
    Otherwise ``spec`` names the data, prepared at the model's input size and channels.
    """
    recorded_path = Path(model_path).parent / DATASET_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if recorded is not None and (spec is None or _same_data(spec, recorded)):
        recorded_spec = datasets.DataSpec(**{**recorded["spec"], "image_size": None})
        contract = InputContract.from_dict(recorded["contract"], recorded["labels"])
        return recorded_spec.open(download=fashion_download.download, record=recorded,
                                  contract=contract, splits=splits)
    spec = spec or datasets.DataSpec()
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3) or None in shape:
        raise errors.ModelError(f"{model_path} takes input of shape {list(shape)}; edgekit works "
                                "with image classifiers taking [N, height, width, 1 or 3].")
    classes = int(model.outputs[0].shape[-1])
    contract = (datasets.FASHION_MNIST if spec.is_fashion_mnist else InputContract(
        height=int(shape[0]), width=int(shape[1]), channels=int(shape[2]),
        labels=contract_module.placeholder_labels(classes),
        preparation=contract_module.default_preparation(int(shape[2]))))
    if spec.is_fashion_mnist and (shape != contract.shape or classes != contract.num_classes):
        raise errors.DataError(
            f"{model_path} takes {list(shape)} images into {classes} classes, not Fashion-MNIST's "
            "28x28x1 into 10: pass its own dataset with --data DIR.")
    return spec.open(download=fashion_download.download, contract=contract, splits=splits)


def _same_data(spec: datasets.DataSpec, recorded: dict[str, Any]) -> bool:
    if spec.is_fashion_mnist:
        return recorded.get("kind") == datasets.FASHION_MNIST_NAME or spec.data == "fashion-mnist"
    return Path(spec.data).resolve() == Path(str(recorded.get("root", ""))).resolve()


def contract_of_record(record: dict[str, Any] | None) -> InputContract | None:
    """The input contract a training record (train_config.json) holds; None before schema 2."""
    if not record or "contract" not in record:
        return None
    return InputContract.from_dict(record["contract"], record["labels"])


def input_pipeline_rate(config: TrainConfig, data_dir: str | None = None,
                        batches: int = 150) -> dict[str, Any]:
    """Images/s the tf.data pipeline alone delivers, with and without augmentation.

    Compared with the training epoch's images/s (history.json), this tells whether the
    augmentation could be the bottleneck: it is not while the pipeline is much faster.
    """
    dataset = datasets.load(data_dir, download=fashion_download.download)
    split = dataset.train.head(config.limit)
    result: dict[str, Any] = {"batch_size": config.batch_size, "batches": batches}
    for augment in (False, True):
        pipeline = make_dataset(split, dataclasses.replace(config, augment=augment), True,
                                dataset.contract.num_classes)
        iterator = iter(pipeline.repeat())
        next(iterator)  # build the graph and fill the shuffle buffer
        started = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - started
        result["augmented" if augment else "plain"] = {
            "seconds": seconds, "images_per_second": batches * config.batch_size / seconds}
    return result
