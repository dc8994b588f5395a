"""The weight average and distillation of the train step (workstation/averaging.py)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from conftest import has_module, run_cli

requires_tensorflow = pytest.mark.skipif(not has_module("tensorflow"),
                                         reason="needs the train extra (TensorFlow)")


def small_edge(**overrides):
    import keras

    from edgekit.workstation import models, training
    from edgekit.workstation.config import TrainConfig

    config = TrainConfig.for_architecture("edge", edge_widths=(8, 8, 8), dense_units=16,
                                          limit=300, epochs=1, batch_size=50, **overrides)
    keras.utils.set_random_seed(3)
    model = models.build(config)
    training.compile_model(model, config, steps_per_epoch=6)
    return config, model


@requires_tensorflow
def test_average_follows_the_weights_with_a_warmed_up_decay(tmp_path):
    import tensorflow as tf

    from edgekit.workstation import averaging

    _, model = small_edge()
    strategy = tf.distribute.get_strategy()
    average = averaging.WeightAverage(strategy, model, decay=0.9)
    # Every float variable: the trainable weights and batch norm's moving statistics.
    names = {variable.path for variable in model.variables if "float" in str(variable.dtype)}
    assert any("moving_mean" in name for name in names)
    assert len(average.averages) == len(names)
    start = [value.copy() for value in average.values()]
    for variable in average.variables:
        variable.assign(variable + 1.0)
    average.update()  # first update: decay min(0.9, 2/11)
    decay = 2 / 11
    for before, after in zip(start, average.values(), strict=True):
        np.testing.assert_allclose(after, decay * before + (1 - decay) * (before + 1.0), rtol=1e-5,
                                   atol=1e-6)
    for _ in range(200):
        average.update()
    assert float(average.updates.numpy()) == 201
    # Long after the warm-up the average has converged on the (unchanged) weights.
    for value, variable in zip(average.values(), average.variables, strict=True):
        np.testing.assert_allclose(value, variable.numpy(), atol=1e-5)

    # swap exchanges the model's weights and the average; twice restores both.
    for variable in average.variables:
        variable.assign(variable * 0.0)
    model_weights = [variable.numpy() for variable in average.variables]
    averaged = average.values()
    average.swap()
    for variable, value in zip(average.variables, averaged, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    average.swap()
    for variable, value in zip(average.variables, model_weights, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)

    # save and load round-trip the average and its update count.
    average.save(tmp_path / "average.npz")
    fresh = averaging.WeightAverage(strategy, model, decay=0.9)
    fresh.load(tmp_path / "average.npz")
    assert float(fresh.updates.numpy()) == 201
    for a, b in zip(fresh.values(), averaged, strict=True):
        np.testing.assert_array_equal(a, b)


@requires_tensorflow
def test_distillation_loss_and_teacher_checks(tmp_path):
    import tensorflow as tf

    from edgekit import errors
    from edgekit.workstation import averaging

    _, student = small_edge()
    student.save(tmp_path / "teacher.keras")
    strategy = tf.distribute.get_strategy()
    distillation = averaging.Distillation(strategy, tmp_path / "teacher.keras", student, weight=1.0,
                                          temperature=2.0)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)), tf.float32)
    hard = tf.ones(8)
    # A student that is its teacher has nothing to learn from it: only the hard term is left.
    same = distillation.losses(images, student(images, training=False), hard).numpy()
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    uniform = distillation.losses(images, tf.fill((8, 10), 0.1), hard).numpy()
    assert np.all(uniform > 1e-3)
    half = averaging.Distillation(strategy, tmp_path / "teacher.keras", student, weight=0.5,
                                  temperature=1.0)
    np.testing.assert_allclose(half.losses(images, student(images, training=False), hard).numpy(),
                               0.5, atol=1e-5)

    with pytest.raises(errors.EdgekitError, match="does not exist"):
        averaging.Distillation(strategy, tmp_path / "missing.keras", student, 0.5, 1.0)
    (tmp_path / "broken.keras").write_bytes(b"not a model")
    with pytest.raises(errors.ModelError, match="cannot load the teacher"):
        averaging.Distillation(strategy, tmp_path / "broken.keras", student, 0.5, 1.0)
    from edgekit.contract import InputContract, default_preparation, placeholder_labels
    from edgekit.workstation import models
    from edgekit.workstation.config import TrainConfig

    other = models.build(TrainConfig(conv_filters=(4, 4), dense_units=8),
                         InputContract(height=28, width=28, channels=1, labels=placeholder_labels(5),
                                       preparation=default_preparation(1)))
    other.save(tmp_path / "five.keras")
    with pytest.raises(errors.ModelError, match="5 classes"):
        averaging.Distillation(strategy, tmp_path / "five.keras", student, 0.5, 1.0)


@requires_tensorflow
def test_loop_updates_the_average_and_distils():
    import tensorflow as tf

    from edgekit.device import datasets
    from edgekit.workstation import averaging, distribute, training

    config, student = small_edge(augment=False)
    _, teacher = small_edge()
    dataset = training.open_data(datasets.DataSpec(), config)
    train_split, _ = training.train_and_validation(dataset, config)
    strategy = tf.distribute.get_strategy()

    class Given(averaging.Distillation):  # the teacher object without a file
        def __init__(self) -> None:
            self.teacher, self.weight, self.temperature = teacher, 1.0, 1.0

    loop = distribute.Loop(distribute.Distribution("default", strategy), student, 0.0,
                           config.batch_size, average_decay=0.99, distillation=Given())
    before = [value.copy() for value in loop.average.values()]
    pipeline = functools.partial(training.make_dataset, config=config, num_classes=10)
    loop.train_epoch(loop.distribute(train_split, functools.partial(pipeline, training=True),
                                     training=True))
    steps = -(-len(train_split) // config.batch_size)
    assert float(loop.average.updates.numpy()) == steps
    moved = [not np.allclose(a, b) for a, b in zip(before, loop.average.values(), strict=True)]
    assert all(moved)  # weights and batch-norm statistics alike
    # The average lags the weights: it is not a copy of them.
    assert any(not np.allclose(a, v.numpy())
               for a, v in zip(loop.average.values(), loop.average.variables, strict=True))


@requires_tensorflow
@pytest.mark.slow
def test_train_keeps_the_better_of_average_and_best_epoch(tmp_path):
    """A short edge run with a weight average: both are validated, the choice is recorded,
    the average is checkpointed, and resuming the finished run makes the same choice."""
    run = tmp_path / "run"
    arguments = ["train", "--arch", "edge", "--limit", "1200", "--epochs", "2", "--ema-decay",
                 "0.9", "--batch-size", "100", "--output-dir", str(run)]
    trained = run_cli(*arguments)
    assert trained.returncode == 0, trained.stderr[-2000:]
    record = json.loads((run / "train_config.json").read_text())
    weights = record["weights"]
    assert weights["kept"] in ("plain", "average") and weights["ema_decay"] == 0.9
    kept = weights[f"{weights['kept']}_validation_accuracy"]
    assert kept == max(weights["plain_validation_accuracy"], weights["average_validation_accuracy"])
    assert record["validation_accuracy"] == pytest.approx(kept)
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert all("average_val_accuracy" in epoch for epoch in history)
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (run / "checkpoints" / state["average_file"]).is_file()
    resumed = run_cli(*arguments, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((run / "train_config.json").read_text())["weights"]
    assert again == weights
    assert f"weights kept: {weights['kept']}" in resumed.stdout
