"""`edgekit train` and `edgekit tune` (workstation: TensorFlow, imported inside)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import config_or_bad_parameter, data_option, data_spec, friendly_errors
from edgekit.workstation.backbones import registry

ARCH_HELP = ("reference: the notebook's CNN; edge: compact int8-friendly residual CNN; or a Keras "
             "Applications backbone to fine-tune (" + ", ".join(registry.FAMILIES) + ").")
WEIGHTS_HELP = ("A backbone's starting weights: imagenet (Keras' download), none (random), or a "
                "weights file saved from the same family [default: imagenet].")


@click.command()
@click.option("--arch", "architecture", type=click.Choice(registry.ARCHITECTURES), metavar="NAME",
              default="reference", show_default=True, help=ARCH_HELP)
@click.option("--epochs", type=int, default=None,
              help="Maximum epochs (default: the recipe's); a backbone's in all, half of them "
                   "for the head unless --head-epochs says.")
@click.option("--weights", default=None, metavar="imagenet|PATH|none", help=WEIGHTS_HELP)
@click.option("--head-epochs", type=int, default=None,
              help="A backbone's phase 1: epochs training the head on the frozen backbone.")
@click.option("--fine-tune-epochs", type=int, default=None,
              help="A backbone's phase 2: epochs with its top blocks unfrozen (sets --epochs to "
                   "head + fine-tune epochs).")
@click.option("--fine-tune-learning-rate", "--fine-tune-lr", "fine_tune_learning_rate", type=float,
              default=None, help="A backbone's phase 2 learning rate (recipe: 1e-4).")
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--patience", type=int, default=None,
              help="Early-stopping patience in epochs (on validation accuracy).")
@click.option("--seed", type=int, default=None, help="Random seed (default 42).")
@click.option("--validation-fraction", type=float, default=None)
@click.option("--augment/--no-augment", default=None,
              help="Random flip, rotation, zoom and shift while training (default: on).")
@click.option("--limit", type=int, default=None, help="Train on the first N training images only.")
@click.option("--ema-decay", type=float, default=None,
              help="Keep a moving average of the weights with this decay (0: off; edge recipe "
                   "0.999); the run keeps it if it validates higher than the best epoch.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Distil from this trained .keras model (it sees the same augmented batches); "
                   "--config sets distillation_weight and distillation_temperature.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON of TrainConfig fields (e.g. the best trial of `edgekit tune`); "
                   "options given on the command line win.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("runs/train"),
              show_default=True, help="Where the model, config, history and checkpoints go.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --output-dir from its last completed epoch "
                   "(same options as the interrupted run).")
@data_option
@click.option("--image-size", default=None, metavar="H[xW]",
              help="A folder dataset's model input size (default: its most common image size, "
                   "at most 224; for a backbone, the family's smallest: 32).")
@click.option("--color-mode", type=click.Choice(["grayscale", "rgb"]), default=None,
              help="A folder dataset's colour (default: RGB unless every image is grey).")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multi-worker"]),
              default="default", show_default=True,
              help="tf.distribute strategy: default (one device), mirrored (every local GPU), "
                   "multi-worker (the cluster in TF_CONFIG; --batch-size is the global batch).")
@click.option("--local-workers", type=click.IntRange(1, 64), default=None, metavar="N",
              help="Try multi-worker on this machine: start N workers on free localhost ports, "
                   "each with its TF_CONFIG, and stream their logs.")
@click.option("--cluster-timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Multi-worker: seconds to wait for every worker of TF_CONFIG to answer.")
@friendly_errors
def train(architecture: str, epochs: int | None, weights: str | None, head_epochs: int | None,
          fine_tune_epochs: int | None, fine_tune_learning_rate: float | None,
          batch_size: int | None,
          learning_rate: float | None, patience: int | None, seed: int | None,
          validation_fraction: float | None, augment: bool | None, limit: int | None,
          ema_decay: float | None, teacher: Path | None, config_file: Path | None,
          output_dir: Path, resume: bool, data: str,
          skip_bad_images: bool, image_size: str | None, color_mode: str | None, strategy: str,
          local_workers: int | None, cluster_timeout: float) -> None:
    """Train a Keras model (validation split from the training data; test set untouched).

    Defaults come from the architecture's recipe (see edgekit.workstation.config.RECIPES).
    Every strategy trains with the same loop; see docs/distributed.md.
    """
    from edgekit.workstation.config import TrainConfig

    overrides: dict[str, Any] = {}
    if config_file is not None:
        try:
            overrides.update(json.loads(config_file.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise click.BadParameter(f"cannot read {config_file}: {error}",
                                     param_hint="--config") from None
        architecture = overrides.pop("architecture", architecture)
    fine_tuning = _fine_tuning(architecture, epochs, weights, head_epochs, fine_tune_epochs,
                               fine_tune_learning_rate)
    overrides.update({key: value for key, value in dict(
        batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        seed=seed, validation_fraction=validation_fraction, augment=augment,
        limit=limit, ema_decay=ema_decay,
        teacher=None if teacher is None else str(teacher.resolve()),
        **fine_tuning).items() if value is not None})
    try:
        config = TrainConfig.for_architecture(architecture, **overrides)
    except (ValueError, TypeError) as error:
        raise click.BadParameter(str(error)) from None
    from edgekit.device import datasets

    if registry.is_backbone(architecture) and image_size is None and not datasets.is_fashion_mnist(data):
        size = registry.family(architecture).default_size  # Fashion-MNIST: upscaled in-graph
        image_size = f"{size}x{size}"
    spec = data_spec(data, skip_bad_images, image_size, color_mode)
    if local_workers is not None:  # options checked once, here, before N workers start
        _run_local_cluster(click.get_current_context(), local_workers, strategy)
        return
    if strategy == "multi-worker":
        from edgekit.workstation import tf_config

        tf_config.from_environment()  # before TensorFlow's import: a bad TF_CONFIG fails at once
    from edgekit.workstation import training

    record = training.train(config, output_dir, spec, resume=resume, strategy=strategy,
                            cluster_timeout=cluster_timeout)
    if record["distribution"]["strategy"] == "multi-worker" and not _is_chief():
        click.echo(f"done; the chief wrote {output_dir}")
        return
    model_path = output_dir / training.MODEL_FILE
    kept = record.get("weights", {}).get("kept")
    which = (f"the moving average of the weights after {record['epochs_run']} epochs"
             if kept == "average" else f"best epoch {record['best_epoch']} of {record['epochs_run']}"
             if record["config"]["schedule"] == "plateau"
             else f"the weights of epoch {record['epochs_run']}")
    click.echo(f"saved {model_path} ({record['parameters']:,} parameters; {which}, validation "
               f"accuracy {record['validation_accuracy']:.2%}, {record['train_seconds']:.0f} s)")
    click.echo(f"Next: edgekit evaluate --model {model_path}")


def _fine_tuning(architecture: str, epochs: int | None, weights: str | None,
                 head_epochs: int | None, fine_tune_epochs: int | None,
                 fine_tune_learning_rate: float | None) -> dict[str, Any]:
    """The fine-tuning options as TrainConfig fields (a bad weights path: one Error line)."""
    if weights is not None:
        weights = weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
        registry.check_weights(weights)
    if fine_tune_epochs is not None and registry.is_backbone(architecture):
        from edgekit.workstation.config import BACKBONE_RECIPE

        head = head_epochs if head_epochs is not None else (
            max(1, epochs // 2) if epochs is not None else BACKBONE_RECIPE["head_epochs"])
        if epochs is not None and epochs != head + fine_tune_epochs:
            raise click.BadParameter(f"--epochs {epochs} is not --head-epochs {head} + "
                                     f"--fine-tune-epochs {fine_tune_epochs}", param_hint="--epochs")
        head_epochs, epochs = head, head + fine_tune_epochs
    elif fine_tune_epochs is not None:
        raise click.BadParameter("--fine-tune-epochs is for Keras Applications backbones",
                                 param_hint="--fine-tune-epochs")
    return {"weights": weights, "head_epochs": head_epochs, "epochs": epochs,
            "fine_tune_learning_rate": fine_tune_learning_rate}


def _is_chief() -> bool:
    from edgekit.workstation import tf_config

    return tf_config.from_environment().is_chief


def _run_local_cluster(context: click.Context, workers: int, strategy: str) -> None:
    """``--local-workers N``: this command again, as N workers of a localhost cluster."""
    from edgekit.workstation import local_cluster

    if strategy not in ("default", "multi-worker"):
        raise click.BadParameter("--local-workers runs --strategy multi-worker", param_hint="--strategy")
    arguments = [*_given_options(context, skip=("local_workers", "strategy")),
                 "--strategy", "multi-worker"]
    local_cluster.run(workers, [sys.executable, "-m", "edgekit.cli", "train", *arguments],
                      echo=click.echo)


def _given_options(context: click.Context, skip: tuple[str, ...]) -> list[str]:
    """The options given on the command line (not defaults), as arguments again."""
    arguments: list[str] = []
    for parameter in context.command.params:
        name = parameter.name or ""
        if (not isinstance(parameter, click.Option) or name in skip
                or context.get_parameter_source(name) is click.core.ParameterSource.DEFAULT):
            continue
        value = context.params[name]
        if parameter.is_flag and parameter.secondary_opts:
            arguments.append(parameter.opts[0] if value else parameter.secondary_opts[0])
        elif parameter.is_flag:
            arguments += [parameter.opts[0]] if value else []
        else:
            arguments += [parameter.opts[0], str(value)]
    return arguments


@click.command()
@click.option("--arch", "architecture", type=click.Choice(registry.ARCHITECTURES), default="edge",
              metavar="NAME",
              show_default=True, help=ARCH_HELP)
@click.option("--weights", default=None, metavar="imagenet|PATH|none", help=WEIGHTS_HELP)
@click.option("--method", type=click.Choice(["bayesian", "hyperband"]), default="bayesian",
              show_default=True)
@click.option("--max-trials", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--budget-minutes", type=click.FloatRange(0.1, 10_000), default=30.0,
              show_default=True, help="Stop starting new trials after this long.")
@click.option("--epochs", type=click.IntRange(1, 500), default=8, show_default=True,
              help="Epochs per trial (Hyperband: the most any trial gets).")
@click.option("--limit", type=int, default=None, help="Search on the first N training images.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("runs/tune"),
              show_default=True)
@data_option
@friendly_errors
def tune(architecture: str, weights: str | None, method: str, max_trials: int,
         budget_minutes: float, epochs: int, limit: int | None, output_dir: Path, data: str,
         skip_bad_images: bool) -> None:
    """Search hyperparameters with KerasTuner on the validation split, within a time budget.

    A backbone's trials train in its two phases (half the epochs each).
    """
    from edgekit.device import datasets
    from edgekit.workstation.config import TrainConfig

    fine_tuning = _fine_tuning(architecture, epochs, weights, None, None, None)
    base = config_or_bad_parameter(TrainConfig.for_architecture, architecture=architecture,
                                   limit=limit, **fine_tuning)
    image_size = None
    if registry.is_backbone(architecture) and not datasets.is_fashion_mnist(data):
        size = registry.family(architecture).default_size
        image_size = f"{size}x{size}"
    spec = data_spec(data, skip_bad_images, image_size)
    from edgekit.workstation import tune as tune_module

    result = tune_module.tune(base, output_dir, method=method, max_trials=max_trials,
                              budget_minutes=budget_minutes, spec=spec, echo=click.echo)
    for line in tune_module.markdown(result["trials"]):
        click.echo(line)
    click.echo(f"best: trial {result['best']['trial']}, validation accuracy "
               f"{result['best']['val_accuracy']:.2%}; wrote {output_dir}/trials.json, trials.md")
    data_hint = "" if spec.is_fashion_mnist else f" --data {data}"
    epochs_hint = ("--head-epochs 5 --fine-tune-epochs 5" if registry.is_backbone(architecture)
                   else "--epochs 40")
    click.echo(f"Next: edgekit train --config {result['best_config_path']} {epochs_hint}{data_hint}")
