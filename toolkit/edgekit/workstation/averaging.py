"""What the train step adds to the plain loss and update: weight averaging and distillation.

:class:`WeightAverage` keeps an exponential moving average of every float variable of a model
(the trainable weights *and* batch norm's moving statistics, as timm's ``ModelEmaV2`` does, so
the averaged network is evaluated with statistics that belong to averaged weights). The decay
warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the early epochs'
average is not dominated by the random initial weights. It is updated after every optimizer
step, in the cross-replica context, on every replica's copy (``strategy.extended.update``).

:class:`Distillation` is the teacher's part of the loss (Hinton et al.; Beyer et al., "a good
teacher is patient and consistent"): the teacher sees *the same augmented batch* as the
student, and the student's loss is ``(1 - w) * cross-entropy + w * T^2 * KL(teacher_T ||
student_T)``. Both networks end in a softmax, so their temperature-scaled distributions are
``softmax(log p / T)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit import errors, fileio


class WeightAverage:
    """An exponential moving average of a model's float variables (see the module's text)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, decay: float):
        self.strategy = strategy
        self.decay = float(decay)
        self.variables = [variable.value for variable in model.variables
                          if "float" in str(variable.dtype)]
        with strategy.scope():
            self.averages = [tf.Variable(variable.read_value(), trainable=False,
                                         name=f"average_{index}")
                             for index, variable in enumerate(self.variables)]
            self.updates = tf.Variable(0.0, trainable=False, name="average_updates")

    def update(self) -> None:
        """One step of the average; call in the train step, after the optimizer's update."""
        self.updates.assign_add(1.0)
        decay = tf.minimum(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

        def step(average: tf.Variable, value: tf.Tensor) -> Any:
            return average.assign(decay * average + (1.0 - decay) * value)

        for average, variable in zip(self.averages, self.variables, strict=True):
            self.strategy.extended.update(average, step, args=(variable,))

    def values(self) -> list[np.ndarray]:
        return [average.numpy() for average in self.averages]

    def swap(self) -> None:
        """Exchange the model's weights and the averaged ones (twice restores both)."""
        current = [variable.numpy() for variable in self.variables]
        for variable, average in zip(self.variables, self.averages, strict=True):
            variable.assign(average.numpy())
        for average, value in zip(self.averages, current, strict=True):
            average.assign(value)

    def save(self, path: Path) -> None:
        with fileio.atomic_path(path) as temporary, open(temporary, "wb") as stream:
            arrays: dict[str, Any] = {f"v{index}": value for index, value in enumerate(self.values())}
            np.savez(stream, updates=self.updates.numpy(), **arrays)

    def load(self, path: Path) -> None:
        with np.load(path) as saved:
            values = [saved[f"v{index}"] for index in range(len(self.averages))]
            self.updates.assign(float(saved["updates"]))
        for average, value in zip(self.averages, values, strict=True):
            average.assign(value)


class Distillation:
    """A teacher model and the loss that pulls the student's outputs towards its outputs."""

    def __init__(self, strategy: tf.distribute.Strategy, teacher_path: str | Path,
                 student: keras.Model, weight: float, temperature: float):
        path = Path(teacher_path)
        if not path.is_file():
            raise errors.EdgekitError(f"teacher model {path} does not exist: pass a .keras file "
                                      "that `edgekit train` wrote (its model.keras).")
        try:
            with strategy.scope():
                self.teacher = keras.models.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
            raise errors.ModelError(f"Keras cannot load the teacher {path}: "
                                    f"{str(error).splitlines()[0] if str(error) else error}") from None
        self.teacher.trainable = False
        wanted = (tuple(student.inputs[0].shape[1:]), int(student.outputs[0].shape[-1]))
        found = (tuple(self.teacher.inputs[0].shape[1:]), int(self.teacher.outputs[0].shape[-1]))
        if wanted != found:
            raise errors.ModelError(
                f"the teacher {path} takes {list(found[0])} images into {found[1]} classes; the "
                f"student takes {list(wanted[0])} into {wanted[1]}: distil from a model of the "
                "same data.")
        self.weight = float(weight)
        self.temperature = float(temperature)

    def _soften(self, probabilities: tf.Tensor) -> tf.Tensor:
        logits = tf.math.log(tf.maximum(probabilities, 1e-7)) / self.temperature
        return tf.nn.log_softmax(logits, axis=-1)

    def losses(self, images: tf.Tensor, student_probabilities: tf.Tensor,
               hard_losses: tf.Tensor) -> tf.Tensor:
        """Per-image loss: the hard-label loss and the divergence from the teacher, mixed."""
        teacher = self._soften(tf.stop_gradient(self.teacher(images, training=False)))
        student = self._soften(student_probabilities)
        divergence = tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)
        return ((1.0 - self.weight) * hard_losses
                + self.weight * self.temperature ** 2 * divergence)
