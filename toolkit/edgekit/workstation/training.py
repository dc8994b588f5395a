"""``edgekit train``: train a Keras model on one device, several, or several machines.

The test set is never touched here: a validation split carved (seeded, stratified) from
the training images drives early stopping, learning-rate decay and checkpoint selection.
Every strategy trains with the one loop of :mod:`edgekit.workstation.distribute`; the
history and checkpoints are :mod:`edgekit.workstation.checkpoints`'.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import errors, fileio
from edgekit.contract import InputContract
from edgekit.device import datasets
from edgekit.workstation import (
    averaging,
    checkpoints,
    distribute,
    fashion_download,
    model_data,
    models,
    tf_config,
)
from edgekit.workstation.config import TrainConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.json"
DATASET_FILE = model_data.DATASET_FILE
data_for_model = model_data.data_for_model  # where the callers of old found it
CHECKPOINT_DIR = checkpoints.CHECKPOINT_DIR


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


def make_dataset(split: datasets.Split, config: TrainConfig, training: bool, num_classes: int,
                 batch_size: int | None = None, drop_remainder: bool = False,
                 share: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None) -> tf.data.Dataset:
    """Float pixels and one-hot labels in batches of ``batch_size`` (default: the config's).

    ``share`` keeps this worker's part of every batch (:meth:`distribute.Loop.distribute`),
    before augmentation, so that a worker augments only the images it trains on.
    """
    images = split.images.astype(np.float32)
    # One-hot labels, so that label smoothing (CategoricalCrossentropy) is available.
    targets = np.eye(num_classes, dtype=np.float32)[split.labels]
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        dataset = dataset.shuffle(len(split), seed=config.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size or config.batch_size, drop_remainder=drop_remainder)
    if share is not None:
        dataset = share(dataset)
    if training and config.augment:
        augmenter = models.build_augmenter(config)
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


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
    # The loss and metric distribute.Loop computes; compiled so that `edgekit tune`'s fit uses
    # them and model.save keeps the optimizer (and its state) for --resume.
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])


def train(config: TrainConfig, output_dir: Path, spec: datasets.DataSpec | None = None,
          verbose: int | None = None, resume: bool = False, strategy: str = "default",
          cluster_timeout: float = distribute.DEFAULT_CLUSTER_TIMEOUT) -> dict[str, Any]:
    """Train, save ``model.keras``, ``train_config.json`` and ``history.json`` in ``output_dir``.

    With ``resume``, continue an interrupted run from its last completed epoch: model and
    optimizer state, epoch counter, early-stopping and learning-rate-decay state. Under
    ``multi-worker`` that is automatic when the chief's checkpoints exist (``BackupAndRestore``'s
    contract: restarting every worker with the same command continues the job), and only the
    chief writes to ``output_dir``, which the workers share.
    """
    output_dir = Path(output_dir)
    spec = spec or datasets.DataSpec()
    # A bad TF_CONFIG, or an output folder the chief cannot write, fails before the data is read.
    if strategy != "multi-worker" or tf_config.from_environment().is_chief:
        fileio.ensure_dir(output_dir)
    automatic = strategy == "multi-worker" and not resume and checkpoints.has_state(output_dir)
    try:
        state = checkpoints.read_state(output_dir, config) if resume or automatic else None
    except errors.EdgekitError as error:
        if not automatic:
            raise
        raise errors.EdgekitError(f"{error} A multi-worker run continues the run in its "
                                  "--output-dir; to start a new one, choose another.") from None
    recorded = output_dir / DATASET_FILE
    dataset = open_data(spec, config, json.loads(recorded.read_text())
                        if state is not None and recorded.is_file() else None)
    distribution = distribute.start(strategy, cluster_timeout)
    with distribution.output_folder(output_dir) as folder:
        if state is None:
            fileio.write_json(fileio.ensure_dir(folder) / DATASET_FILE,
                              {"spec": spec.to_dict(), "contract": dataset.contract.to_dict(),
                               "labels": list(dataset.contract.labels), **dataset.record})
        try:
            return _train(config, spec, dataset, distribution, state, output_dir, folder,
                          verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))
        except distribute.PEER_ERRORS as error:
            if distribution.cluster is None:
                raise
            raise distribute.lost_peer(distribution, error, output_dir) from None


def _train(config: TrainConfig, spec: datasets.DataSpec, dataset: datasets.Dataset,
           distribution: distribute.Distribution, state: dict[str, Any] | None, source: Path,
           folder: Path, verbose: int) -> dict[str, Any]:
    """The run, reading a resumed run from ``source`` and writing into ``folder``."""
    checkpoint_dir = fileio.ensure_dir(folder / CHECKPOINT_DIR)
    initial_epoch = 0 if state is None else int(state["epoch"])
    # Seeded per starting epoch: a resumed run does not replay the first epochs' order.
    keras.utils.set_random_seed(config.seed + initial_epoch)
    train_split, validation_split = train_and_validation(dataset, config)
    classes = dataset.contract.num_classes
    steps = distribution.steps_per_epoch(len(train_split), config.batch_size)
    model = _model(config, dataset.contract, distribution, state, source, steps)
    distribute.check_agreement(
        distribution, resumed_epoch=initial_epoch, train_images=len(train_split),
        validation_images=len(validation_split),
        options=zlib.crc32(json.dumps(config.to_dict(), sort_keys=True).encode()) % 65521)
    previous = _previous_epochs(source, initial_epoch) if state is not None else []
    recorder = checkpoints.HistoryRecorder(folder / HISTORY_FILE, len(train_split), previous)
    callbacks = _callbacks(config, distribution, recorder, checkpoint_dir, state,
                           source / CHECKPOINT_DIR)
    finished = state is not None and (state["stopped"] or initial_epoch >= config.epochs)
    if distribution.is_chief:
        print(f"Training {model.name} ({model.count_params():,} parameters) on "
              f"{len(train_split):,} images, validating on {len(validation_split):,}; data from "
              f"{dataset.source}; {_describe(distribution, config.batch_size)}"
              + (f"; resuming after epoch {initial_epoch}" if state is not None else ""),
              flush=True)
    started = time.perf_counter()
    distillation = (averaging.Distillation(distribution.strategy, config.teacher, model,
                                           config.distillation_weight,
                                           config.distillation_temperature)
                    if config.teacher else None)
    if finished:  # the weights the run ended with: its best epoch's, or (cosine) its last
        assert state is not None
        kept = checkpoints.BEST_FILE if _restores_best_epoch(config) else state["model_file"]
        with distribution.strategy.scope():
            model = keras.models.load_model(source / CHECKPOINT_DIR / kept, compile=True)
    loop = distribute.Loop(distribution, model, config.label_smoothing, config.batch_size,
                           config.ema_decay, distillation)
    callbacks[-1].average = loop.average
    if loop.average is not None and state is not None and state.get("average_file"):
        loop.average.load(source / CHECKPOINT_DIR / state["average_file"])
    pipeline = functools.partial(make_dataset, config=config, num_classes=classes)
    validation_data = loop.distribute(validation_split, functools.partial(pipeline, training=False),
                                      training=False)
    if not finished:
        train_data = loop.distribute(train_split, functools.partial(pipeline, training=True),
                                     training=True)
        run_epochs = models.epoch_runner(config)  # a backbone: frozen, then its top blocks
        run_epochs(loop, train_data, validation_data, callbacks, initial_epoch, config.epochs,
                   steps, verbose)
    seconds = time.perf_counter() - started + sum(record["epoch_seconds"] for record in previous)
    validation, weights = _choose_weights(loop, validation_data, validation_split,
                                          distribution.is_chief)
    record = _record(config, spec, dataset, distribution, model, recorder.epochs, validation)
    record["weights"] = weights
    record.update(train_images=len(train_split), validation_images=len(validation_split),
                  train_seconds=round(seconds, 1),
                  resumed_at_epoch=initial_epoch if state is not None else None)
    with fileio.atomic_path(folder / MODEL_FILE) as temporary:
        model.save(temporary)
    fileio.write_json(folder / CONFIG_FILE, record)
    return record


def _restores_best_epoch(config: TrainConfig) -> bool:
    """Whether the run ends on its best epoch's weights (else on its last epoch's).

    The plateau schedule stops early and goes back to its best epoch. The cosine schedule is
    made to end at its last epoch, where the learning rate has decayed: picking the best of
    its epochs instead picks the highest of many noisy validation readings (6,000 images
    measure accuracy to about +/-0.3 pp), which is biased upward — in the first edge release run
    that pick (epoch 29 of 42, validation 94.02 %) scored 0.45 pp below the last epoch on the
    test set (docs/edge-model.md).
    """
    return config.schedule == "plateau"


# The moving average is kept unless the plain weights are better on the validation split
# beyond chance: McNemar's exact test on the images one gets right and the other wrong.
SIGNIFICANCE = 0.05


def _choose_weights(loop: distribute.Loop, validation_data: Any, split: datasets.Split,
                    chief: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """The weights the run keeps: the run's own, or the moving average of its weights.

    Decided on the validation split alone. With an average, the average is kept unless the
    plain weights score higher and a paired exact test says the difference is not chance
    (p < SIGNIFICANCE): the average is the estimator the recipe asked for, and the larger of
    two near-equal noisy scores is no evidence. The model holds the kept weights afterwards.
    """
    from edgekit.device import parity

    plain = loop.evaluate(validation_data)
    if loop.average is None:
        return plain, {"kept": "plain"}
    plain_correct = _correct(loop.model, split)
    loop.average.swap()
    averaged = loop.evaluate(validation_data)
    paired = parity.mcnemar_exact(_correct(loop.model, split), plain_correct)
    test = {"average_only_correct": paired["reference_only_correct"],
            "plain_only_correct": paired["artifact_only_correct"], "p_value": paired["p_value"]}
    better = plain["accuracy"] > averaged["accuracy"] and test["p_value"] < SIGNIFICANCE
    kept = "plain" if better else "average"
    if kept == "plain":
        loop.average.swap()
    weights = {"kept": kept, "ema_decay": loop.average.decay,
               "plain_validation_accuracy": float(plain["accuracy"]),
               "average_validation_accuracy": float(averaged["accuracy"]),
               "mcnemar": test, "significance": SIGNIFICANCE}
    if chief:
        print(f"weights kept: {kept} (validation accuracy: plain {plain['accuracy']:.4%}, "
              f"moving average {averaged['accuracy']:.4%}; McNemar p {test['p_value']:.3f})",
              flush=True)
    return (averaged if kept == "average" else plain), weights


def _correct(model: keras.Model, split: datasets.Split) -> np.ndarray:
    """Which validation images the model gets right (in inference mode)."""
    # Called directly, not through predict: the same on every worker of any strategy.
    predictions = [np.asarray(model(split.images[start:start + 1000].astype(np.float32),
                                    training=False)).argmax(axis=1)
                   for start in range(0, len(split), 1000)]
    return np.concatenate(predictions) == split.labels


def _model(config: TrainConfig, contract: InputContract, distribution: distribute.Distribution,
           state: dict[str, Any] | None, source: Path, steps_per_epoch: int) -> keras.Model:
    """A new compiled model, or the resumed run's last one (optimizer state included)."""
    with distribution.strategy.scope():
        if state is not None:
            return keras.models.load_model(source / CHECKPOINT_DIR / state["model_file"],
                                           compile=True)
        model = models.build(config, contract)
        compile_model(model, config, steps_per_epoch)
        return model


def _callbacks(config: TrainConfig, distribution: distribute.Distribution,
               recorder: checkpoints.HistoryRecorder, checkpoint_dir: Path,
               state: dict[str, Any] | None, source: Path) -> list[keras.callbacks.Callback]:
    """Early stopping, the plateau schedule, history and checkpoints, in the order they run."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=config.patience,
        restore_best_weights=_restores_best_epoch(config),
        verbose=int(distribution.is_chief))
    reduce_lr = None
    if config.schedule == "plateau":
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", mode="min", factor=0.5, patience=max(1, config.patience // 2),
            min_lr=1e-5)
    return [early_stopping, *([reduce_lr] if reduce_lr else []), recorder,
            checkpoints.ResumableCheckpoint(checkpoint_dir, config, early_stopping, reduce_lr,
                                            state, source)]


def _describe(distribution: distribute.Distribution, global_batch: int) -> str:
    if distribution.name == "default":
        return f"batch {global_batch}"
    return (f"{distribution.name} on {distribution.workers} worker(s), {distribution.replicas} "
            f"replica(s): global batch {global_batch}, "
            f"{distribution.per_replica_batch(global_batch)} per replica")


def _previous_epochs(source: Path, initial_epoch: int) -> list[dict[str, Any]]:
    history_path = source / HISTORY_FILE
    previous = json.loads(history_path.read_text())["epochs"] if history_path.is_file() else []
    return [record for record in previous if record["epoch"] <= initial_epoch]


def _record(config: TrainConfig, spec: datasets.DataSpec, dataset: datasets.Dataset,
            distribution: distribute.Distribution, model: keras.Model,
            epochs: list[dict[str, Any]], validation: dict[str, float]) -> dict[str, Any]:
    """train_config.json, the record a model is rebuilt and judged from."""
    contract = dataset.contract
    return {
        "config": config.to_dict(),
        "parameters": int(model.count_params()),
        "train_images": 0,  # the counts, time and resumed epoch are the caller's
        "validation_images": 0,
        "epochs_run": len(epochs),
        "best_epoch": int(np.argmax([epoch["val_accuracy"] for epoch in epochs])) + 1,
        "validation_accuracy": float(validation["accuracy"]),
        "validation_loss": float(validation["loss"]),
        "train_seconds": 0.0,
        "resumed_at_epoch": None,
        "dataset": str(dataset.source),
        "data": spec.to_dict(),
        "contract": contract.to_dict(),
        "labels": list(contract.labels),
        "environment": environment(),
        "distribution": distribution.record(config.batch_size),
        **models.describe_backbone(config, contract),
    }


def load_record(model_path: Path) -> dict[str, Any] | None:
    """The training record saved beside a model, if there is one."""
    path = Path(model_path).parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
