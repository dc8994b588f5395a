"""``edgekit tune``: hyperparameter search with KerasTuner on the validation split.

Workstation only. The search space is declared in ``search_space``; every trial trains a
model built from a ``TrainConfig`` on the training split and is scored on validation
accuracy (never the test set). A time budget stops the search between trials. The trials
table and the best configuration (a JSON that ``edgekit train --config`` reads) are saved.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner

from edgekit import errors, fileio
from edgekit.contract import InputContract
from edgekit.device import datasets
from edgekit.workstation import models, training
from edgekit.workstation.backbones import finetune, registry
from edgekit.workstation.config import EDGE_STEMS, TrainConfig

TRIALS_JSON = "trials.json"
TRIALS_MARKDOWN = "trials.md"
BEST_CONFIG = "best_config.json"


def search_space(hp: keras_tuner.HyperParameters, architecture: str) -> dict[str, Any]:
    """The declared search space: TrainConfig fields and their ranges."""
    if registry.is_backbone(architecture):
        # A backbone: the two phases' learning rates and the head's regularisation.
        return {
            "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
            "fine_tune_learning_rate": hp.Float("fine_tune_learning_rate", 1e-5, 1e-3,
                                                sampling="log"),
            "dropout_rate": hp.Float("dropout_rate", 0.0, 0.5, step=0.1),
            "label_smoothing": hp.Choice("label_smoothing", [0.0, 0.1]),
        }
    space: dict[str, Any] = {
        "learning_rate": hp.Float("learning_rate", 1e-3, 1e-2, sampling="log"),
        "dropout_rate": hp.Float("dropout_rate", 0.0, 0.5, step=0.1),
        "label_smoothing": hp.Choice("label_smoothing", [0.0, 0.05, 0.1]),
        "erasing_factor": hp.Choice("erasing_factor", [0.0, 0.25, 0.5]),
        "shift_factor": hp.Choice("shift_factor", [0.04, 0.07, 0.1]),
    }
    if architecture == "edge":
        # Every choice keeps the int8 file under 200 KB (32-64-64 with 96 units: 171 K weights).
        widths = hp.Choice("edge_widths", ["16-32-32", "24-48-48", "32-64-64"])
        space["dense_units"] = hp.Choice("dense_units", [64, 96])
        space["edge_widths"] = tuple(int(part) for part in widths.split("-"))
        space["edge_stem"] = hp.Choice("edge_stem", list(EDGE_STEMS))
        space["edge_blocks"] = hp.Int("edge_blocks", 0, 1)
        space["weight_decay"] = hp.Float("weight_decay", 1e-3, 5e-2, sampling="log")
    else:
        space["dense_units"] = hp.Choice("dense_units", [128, 256])
    return space


class TrainConfigHyperModel(keras_tuner.HyperModel):
    def __init__(self, base: TrainConfig, train_split: datasets.Split,
                 validation_split: datasets.Split, contract: InputContract):
        super().__init__()
        self.base = base
        self.contract = contract
        self.train_split = train_split
        self.validation_split = validation_split

    def config_for(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        return dataclasses.replace(self.base, **search_space(hp, self.base.architecture.value))

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = self.config_for(hp)
        model = models.build(config, self.contract)
        steps = -(-len(self.train_split) // config.batch_size)
        training.compile_model(model, config, steps)
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args: Any,
            **kwargs: Any) -> Any:
        config = self.config_for(hp)
        classes = self.contract.num_classes
        data = training.make_dataset(self.train_split, config, True, classes)
        validation = training.make_dataset(self.validation_split, config, False, classes)
        if not config.architecture.is_backbone:
            return model.fit(data, validation_data=validation, epochs=config.epochs, verbose=0,
                             callbacks=kwargs.get("callbacks"))
        # A backbone: the head on the frozen backbone, then its top blocks (as `edgekit train`).
        family = registry.family(config.architecture.value)
        scores: list[float] = []
        for phase in finetune.phases(config):
            if phase.name == "fine-tune":
                finetune.set_phase(model, family, phase.name)
                training.compile_model(model, dataclasses.replace(
                    config, learning_rate=phase.learning_rate),
                    -(-len(self.train_split) // config.batch_size))
            history = model.fit(data, validation_data=validation, epochs=phase.last_epoch,
                                initial_epoch=phase.first_epoch, verbose=0,
                                callbacks=kwargs.get("callbacks"))
            scores += history.history["val_accuracy"]
        return {"val_accuracy": max(scores)}


def tune(base: TrainConfig, output_dir: Path, method: str = "bayesian", max_trials: int = 10,
         budget_minutes: float = 30.0, spec: datasets.DataSpec | None = None,
         echo: Callable[[str], None] = print) -> dict[str, Any]:
    output_dir = fileio.ensure_dir(output_dir)
    dataset = training.open_data(spec or datasets.DataSpec(), base)
    keras.utils.set_random_seed(base.seed)
    train_split, validation_split = training.train_and_validation(dataset, base)
    hypermodel = TrainConfigHyperModel(base, train_split, validation_split, dataset.contract)
    common = {"objective": "val_accuracy", "directory": str(output_dir), "project_name": "search",
              "overwrite": True, "seed": base.seed}
    if method == "hyperband":
        tuner: keras_tuner.Tuner = keras_tuner.Hyperband(
            hypermodel, max_epochs=base.epochs, factor=3, hyperband_iterations=1, **common)
    else:
        tuner = keras_tuner.BayesianOptimization(hypermodel, max_trials=1, **common)
    deadline = time.monotonic() + budget_minutes * 60
    started = time.monotonic()
    trials_done = 0
    # One trial per call: the budget is checked between trials, never mid-trial.
    while trials_done < max_trials and time.monotonic() < deadline:
        tuner.oracle.max_trials = trials_done + 1
        before = len(tuner.oracle.trials)
        tuner.search(verbose=0)
        trials_done = len(tuner.oracle.trials)
        if trials_done == before:  # the oracle has nothing left to try
            break
        latest = tuner.oracle.trials[sorted(tuner.oracle.trials)[-1]]
        score = latest.score
        echo(f"trial {trials_done}: val_accuracy "
             f"{score:.4f} ({time.monotonic() - started:.0f} s so far)" if score is not None
             else f"trial {trials_done}: failed")
    rows = trials_table(tuner, hypermodel)
    if not rows:
        raise errors.EdgekitError("no trial finished within the budget; raise --budget-minutes.")
    best = max(rows, key=lambda row: row["val_accuracy"])
    best_config = {key: value for key, value in best["config"].items() if key != "limit"}
    fileio.write_json(output_dir / BEST_CONFIG, best_config)
    fileio.write_json(output_dir / TRIALS_JSON, {"method": method, "objective": "val_accuracy",
                                                  "seconds": time.monotonic() - started,
                                                  "trials": rows})
    fileio.write_text(output_dir / TRIALS_MARKDOWN, "\n".join(markdown(rows)) + "\n")
    return {"best": best, "trials": rows, "best_config_path": str(output_dir / BEST_CONFIG)}


def trials_table(tuner: keras_tuner.Tuner, hypermodel: TrainConfigHyperModel) -> list[dict[str, Any]]:
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        if trial.score is None:
            continue
        config = hypermodel.config_for(trial.hyperparameters)
        rows.append({"trial": trial_id, "val_accuracy": float(trial.score),
                     "hyperparameters": dict(trial.hyperparameters.values),
                     "config": config.to_dict()})
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    names = sorted({name for row in rows for name in row["hyperparameters"]})
    lines = ["| trial | val_accuracy | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for row in sorted(rows, key=lambda row: -row["val_accuracy"]):
        values = [row["hyperparameters"].get(name, "") for name in names]
        lines.append(f"| {row['trial']} | {row['val_accuracy']:.4f} | "
                     + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)
                     + " |")
    return lines
