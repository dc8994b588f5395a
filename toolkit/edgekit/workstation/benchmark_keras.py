"""The benchmark's TensorFlow side: the Keras baselines and the training throughput.

``edgekit benchmark`` passes these to ``edgekit.device.benchmark.run`` where TensorFlow is
installed (the device side never imports it). They time through the device side's own
``timing`` and ``machine`` helpers, so their rows compare with the artifacts' rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.benchmark import machine, timing
from edgekit.device.benchmark.config import BenchmarkConfig


def keras_baselines(model_path: Path, images: np.ndarray,
                    config: BenchmarkConfig) -> dict[str, dict[str, Any]]:
    """Keras through ``model.predict`` and through a direct call."""
    from edgekit.workstation import evaluation

    model = evaluation.load_keras_model(model_path)
    small = dataclasses.replace(config, single_runs=max(10, config.single_runs // 10),
                                warmup_runs=min(config.warmup_runs, 5))
    as_float = images.astype(np.float32)

    def predict(x: np.ndarray) -> Any:
        return model.predict(x.astype(np.float32), verbose=0)

    def direct(x: np.ndarray) -> Any:
        return np.asarray(model(x.astype(np.float32), training=False))

    def measure(call: Callable[[np.ndarray], Any]) -> tuple[dict[str, float], dict[str, Any]]:
        return timing.time_single(call, as_float, small), timing.time_batched(call, as_float, config)

    baselines = {}
    for name, call in (("keras model.predict", predict), ("keras direct call", direct)):
        snapshot = machine.cpu_snapshot()
        (single, batched), rate = timing.bracketed(functools.partial(measure, call), config)
        baselines[name] = {"single": single, "batched": batched, "matmul": rate,
                           "machine_load": machine.machine_load(snapshot, machine.cpu_snapshot())}
    return baselines


def training_throughput(folder: Path, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """Training speed from history.json beside the model, and the input pipeline alone."""
    from edgekit.workstation import training
    from edgekit.workstation.config import TrainConfig

    history_path = folder / training.HISTORY_FILE
    record = training.load_record(folder / training.MODEL_FILE)
    if not history_path.is_file() or record is None:
        echo("no training history beside the model: skipping the training measurement")
        return None
    epochs = json.loads(history_path.read_text())["epochs"]
    config = TrainConfig.from_dict(record["config"])
    echo("measuring the training input pipeline with and without augmentation")
    pipeline = training.input_pipeline_rate(config)
    rates = [epoch["train_images_per_second"] for epoch in epochs]
    median = float(np.median(rates))
    return {
        "epoch_images_per_second_median": median,
        "epoch_seconds_median": float(np.median([epoch["epoch_seconds"] for epoch in epochs])),
        "augmentation": config.augment,
        "pipeline": pipeline,
        "pipeline_headroom": pipeline["augmented"]["images_per_second"] / median,
    }
