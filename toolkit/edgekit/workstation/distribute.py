"""Training on tf.distribute: one train step under ``strategy.run`` for every strategy.

``default`` (one device), ``mirrored`` (every local GPU, or the CPU) and ``multi-worker``
(``MultiWorkerMirroredStrategy`` over the workers of ``TF_CONFIG``) all run :class:`Loop`:
the model and optimizer are built in the strategy's scope, each replica computes its share of
the loss divided by the number of images in the *global* batch, the optimizer sums the replicas'
gradients (an all-reduce), and the epoch's metrics are summed over replicas with
``strategy.reduce``. Keras' ``model.fit`` is not used for any of them: under
``MultiWorkerMirroredStrategy`` it fails in Keras 3 (keras-team/keras#20585), and one loop for
every strategy cannot drift from a second one. Early stopping, learning-rate decay, history and
checkpoints are the same Keras callbacks ``fit`` would call, called by :func:`run_epochs`.

Input: edgekit's datasets are in-memory uint8 arrays (Fashion-MNIST and image folders alike), so
they are sharded by data, after ``--limit``: every worker shuffles the same split with the same
seed, cuts the same global batches (``--batch-size``) and keeps its rows of each one, which it
alone augments (see :meth:`Loop.distribute`). The N-worker run trains on the one-worker run's
batches; only the random draws of augmentation and dropout differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import errors, fileio
from edgekit.device import datasets
from edgekit.workstation import averaging, checkpoints, tf_config

STRATEGIES = ("default", "mirrored", "multi-worker")
DEFAULT_CLUSTER_TIMEOUT = 60.0  # seconds: every peer must answer within this at start-up


@dataclasses.dataclass
class Distribution:
    """The strategy a run trains on, and this process' place in it."""

    name: str
    strategy: tf.distribute.Strategy
    cluster: tf_config.ClusterConfig | None = None  # multi-worker only

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def workers(self) -> int:
        return 1 if self.cluster is None else self.cluster.num_workers

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def worker_name(self) -> str:
        return "" if self.cluster is None else self.cluster.name

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    def steps_per_epoch(self, train_images: int, global_batch: int) -> int:
        """Optimizer steps per epoch (see :meth:`Loop.distribute`)."""
        if self.local_replicas > 1:  # the last partial batch is dropped
            return max(1, train_images // global_batch)
        last = train_images % global_batch
        return -(-train_images // global_batch) - int(0 < last < self.workers)

    def per_replica_batch(self, global_batch: int) -> int:
        if global_batch % self.replicas:
            raise errors.EdgekitError(
                f"--batch-size {global_batch} is the global batch; it must be a multiple of the "
                f"{self.replicas} replicas of this {self.name} run.")
        return global_batch // self.replicas

    def record(self, global_batch: int) -> dict[str, Any]:
        return {"strategy": self.name, "workers": self.workers, "replicas": self.replicas,
                "global_batch_size": global_batch,
                "per_replica_batch_size": self.per_replica_batch(global_batch)}

    @contextlib.contextmanager
    def output_folder(self, output_dir: Path) -> Iterator[Path]:
        """Where this process writes: ``output_dir`` on the chief, else a scratch folder.

        Every worker saves what the chief saves (the pattern of TensorFlow's multi-worker Keras
        tutorial: saving reads variables, so all take part); the others' copies go to a folder
        in the system's temporary folder, deleted at the end. Its name follows from the worker
        and ``output_dir``, so a restarted job clears what a killed worker left there.
        """
        if self.is_chief:
            yield output_dir
            return
        digest = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / f"edgekit-{self.worker_name.replace(' ', '')}-{digest}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            yield fileio.ensure_dir(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def start(name: str, cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
          echo: Callable[[str], None] = print) -> Distribution:
    """The strategy called ``name``; for multi-worker, after every peer of TF_CONFIG answered."""
    if name == "default":
        return Distribution(name, tf.distribute.get_strategy())
    if name == "mirrored":
        return Distribution(name, tf.distribute.MirroredStrategy())
    if name != "multi-worker":
        raise errors.EdgekitError(f"unknown strategy {name!r}: one of {', '.join(STRATEGIES)}")
    cluster = tf_config.from_environment()
    tf_config.wait_for_peers(cluster, cluster_timeout, echo)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # TensorFlow's coordination service installs a SIGTERM handler of its own (a pre-emption
    # notice, and the process no longer stops); put back edgekit's, so SIGTERM ends the run.
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)
    return Distribution(name, strategy, cluster)


# What a collective raises when a peer died or stopped answering (the first is the usual one:
# "Collective ops is aborted by: ... Connection reset by peer").
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError, tf.errors.InternalError, tf.errors.UnknownError,
               tf.errors.FailedPreconditionError)


def lost_peer(distribution: Distribution, error: tf.errors.OpError,
              output_dir: Path) -> errors.EdgekitError:
    """The one line a worker prints when the cluster lost a peer mid-training."""
    state = output_dir / checkpoints.CHECKPOINT_DIR / checkpoints.STATE_FILE
    epoch = json.loads(state.read_text())["epoch"] if state.is_file() else 0
    reason = next((line.strip() for line in str(error.message).splitlines() if line.strip()),
                  type(error).__name__)
    return errors.EdgekitError(
        f"{distribution.worker_name}: the cluster lost a worker ({reason}). Restart every worker "
        f"with the same command: training continues after epoch {epoch}, the chief's last "
        "saved one." if epoch else
        f"{distribution.worker_name}: the cluster lost a worker ({reason}) before the first "
        "epoch was saved. Restart every worker with the same command.")


def check_agreement(distribution: Distribution, **values: int) -> None:
    """Raise unless every worker holds the same ``values`` (one all-reduce; every worker raises).

    Workers that disagree would otherwise train different models in lock-step, or wait for
    each other at different steps: a resumed epoch seen by the chief alone (``--output-dir``
    not shared), other options, or other data.
    """
    if distribution.cluster is None:
        return
    local = tf.constant([[value, value * value] for value in values.values()], tf.int64)
    total = distribution.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                         distribution.strategy.run(lambda: tf.identity(local)),
                                         axis=None).numpy()
    # All equal exactly when n * sum(v^2) == (sum v)^2 (Cauchy-Schwarz), the same test everywhere.
    differ = [name for name, (sum_, squares) in zip(values, total, strict=True)
              if distribution.replicas * squares != sum_ * sum_]
    if differ:
        raise errors.EdgekitError(
            f"{distribution.worker_name}: the workers disagree on {', '.join(differ)}. Start every "
            "worker with the same command, data and --output-dir (one folder they all see: the "
            "chief's checkpoints are where a restarted job resumes).")


def shard(split: datasets.Split, index: int, count: int) -> datasets.Split:
    """Input pipeline ``index`` of ``count``: every ``count``-th image, from the ``index``-th."""
    if count == 1:
        return split
    return datasets.Split(split.images[index::count], split.labels[index::count])


# make(split, batch_size=..., drop_remainder=..., share=...) -> a batched tf.data pipeline
# (training.make_dataset with its config bound)
DatasetMaker = Callable[..., tf.data.Dataset]


class Loop:
    """The train and evaluation steps of one model on one strategy.

    The model must have been built and compiled (optimizer) in ``distribution.strategy.scope()``.
    """

    def __init__(self, distribution: Distribution, model: keras.Model, label_smoothing: float,
                 global_batch: int, average_decay: float = 0.0,
                 distillation: averaging.Distillation | None = None):
        self.distribution = distribution
        self.strategy = distribution.strategy
        self.model = model
        self.label_smoothing = label_smoothing
        self.global_batch = global_batch
        self.per_replica_batch = distribution.per_replica_batch(global_batch)
        if not model.optimizer.built:
            # Its slot variables must exist before the train step runs (as fit does it).
            with self.strategy.scope():
                model.optimizer.build(model.trainable_variables)
        # An average of the weights, updated after every step (None: off).
        self.average = (averaging.WeightAverage(self.strategy, model, average_decay)
                        if average_decay > 0 else None)
        self.distillation = distillation
        self._train = tf.function(self._train_batch, reduce_retracing=True)
        self._evaluate = tf.function(self._evaluate_batch, reduce_retracing=True)
        # Batch norm's moving statistics: each replica updates its own copy from its own
        # batches (Keras creates them with aggregation "none").
        self._statistics = [variable for variable in model.non_trainable_variables
                            if "float" in str(variable.dtype)]
        self._average_statistics = tf.function(self._average_statistics_replicas)

    def distribute(self, split: datasets.Split, make: DatasetMaker, training: bool) -> Any:
        """The split as a distributed dataset of per-replica batches.

        Training: every worker shuffles the whole split (the same seed everywhere), batches it
        by the global batch and keeps rows ``i, i + n, ...`` of each batch — worker ``i`` of
        ``n``'s share — then augments its share. So the global batches are the one-worker
        run's, batch for batch (the loss is divided by the images of the whole global batch,
        so the last, smaller one weighs as it does on one worker). With several replicas on a
        worker, the last partial global batch is dropped and the share is split into
        per-replica batches. Validation: worker ``i`` takes every ``n``-th image (order does
        not matter; the metrics are summed).
        """
        distribution = self.distribution
        if not training:
            return self.strategy.distribute_datasets_from_function(
                lambda context: make(shard(split, context.input_pipeline_id,
                                           context.num_input_pipelines),
                                     batch_size=self.per_replica_batch))

        def share(index: int, count: int, dataset: tf.data.Dataset) -> tf.data.Dataset:
            if count > 1:
                # A last batch smaller than the workers would leave a share empty (and batch
                # norm's statistics NaN): it is dropped (fewer than `count` images).
                dataset = dataset.filter(lambda x, y: tf.shape(x)[0] >= count)
                dataset = dataset.map(lambda x, y: (x[index::count], y[index::count]))
            if distribution.local_replicas > 1:
                dataset = dataset.unbatch().batch(self.per_replica_batch)
            return dataset

        return self.strategy.distribute_datasets_from_function(
            lambda context: make(split, batch_size=self.global_batch,
                                 drop_remainder=distribution.local_replicas > 1,
                                 share=functools.partial(share, context.input_pipeline_id,
                                                         context.num_input_pipelines)))

    def _sums(self, targets: tf.Tensor, probabilities: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        losses = keras.losses.categorical_crossentropy(targets, probabilities,
                                                       label_smoothing=self.label_smoothing)
        correct = tf.cast(tf.equal(tf.argmax(targets, -1), tf.argmax(probabilities, -1)), tf.float32)
        return losses, correct

    def _train_replica(self, images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(images)[0], tf.float32)
        # The images in this step over all replicas: the last batch of an epoch is smaller.
        global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            losses, correct = self._sums(targets, probabilities)
            # The teacher sees this very (augmented) batch: consistent distillation.
            objective = (losses if self.distillation is None
                         else self.distillation.losses(images, probabilities, losses))
            loss = tf.nn.compute_average_loss(objective,
                                              global_batch_size=tf.cast(global_count, tf.int64))
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        variables = self.model.trainable_variables
        # Keras' optimizer sums the replicas' gradients: each is its share of the global mean.
        self.model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables,
                                                 strict=True))
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct), count])

    def _evaluate_replica(self, images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        losses, correct = self._sums(targets, self.model(images, training=False))
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct),
                         tf.cast(tf.shape(images)[0], tf.float32)])

    def _train_batch(self, batch: Any) -> tf.Tensor:
        sums = self.strategy.run(self._train_replica, args=batch)
        if self.average is not None:
            self.average.update()
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def _evaluate_batch(self, batch: Any) -> tf.Tensor:
        sums = self.strategy.run(self._evaluate_replica, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def _average_statistics_replicas(self) -> None:
        def average() -> None:
            context = tf.distribute.get_replica_context()
            for variable in self._statistics:
                # identity: a mirrored variable's read has no device a collective can use.
                value = tf.identity(variable.value)
                variable.assign(context.all_reduce(tf.distribute.ReduceOp.MEAN, value))

        self.strategy.run(average)

    def train_epoch(self, dataset: Any, progress: keras.utils.Progbar | None = None) -> dict[str, float]:
        """One pass over the training data; then every replica holds the same statistics.

        The replicas' moving statistics are averaged after the epoch, so validation, the
        checkpoints and the saved model (the chief's copy) all see one model.
        """
        totals = np.zeros(3)
        for step, batch in enumerate(dataset):
            totals += self._train(batch).numpy()
            if progress is not None:
                progress.update(step + 1)
        if self.distribution.replicas > 1 and self._statistics:
            self._average_statistics()
        return {"accuracy": totals[1] / totals[2], "loss": totals[0] / totals[2]}

    def evaluate(self, dataset: Any) -> dict[str, float]:
        totals = np.zeros(3)
        for batch in dataset:
            totals += self._evaluate(batch).numpy()
        return {"accuracy": totals[1] / totals[2], "loss": totals[0] / totals[2]}


def run_epochs(loop: Loop, train_data: Any, validation_data: Any,
               callbacks: list[keras.callbacks.Callback], initial_epoch: int, epochs: int,
               steps: int, verbose: int) -> None:
    """What ``model.fit`` does with its callbacks, on :class:`Loop`'s steps.

    ``verbose``: 0 silent, 1 a progress bar, 2 one line per epoch (only the chief prints).
    Every worker sees the same summed metrics, so early stopping stops them all at once.
    """
    model = loop.model
    verbose = verbose if loop.distribution.is_chief else 0
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        started = time.perf_counter()
        bar = keras.utils.Progbar(steps, verbose=1) if verbose == 1 else None
        metrics = loop.train_epoch(train_data, bar)
        validation = loop.evaluate(validation_data)
        logs = {**metrics, "val_accuracy": validation["accuracy"], "val_loss": validation["loss"]}
        if loop.average is not None:  # the averaged weights, on the same validation images
            loop.average.swap()
            averaged = loop.evaluate(validation_data)
            loop.average.swap()
            logs.update(average_val_accuracy=averaged["accuracy"], average_val_loss=averaged["loss"])
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                f"{key} {value:.4f}" for key, value in logs.items())
                + f" ({time.perf_counter() - started:.1f} s)", flush=True)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    sys.stdout.flush()
