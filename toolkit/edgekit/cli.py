"""The ``edgekit`` command line.

Heavy modules (TensorFlow, ONNX, matplotlib) are imported inside the commands that need
them, so ``edgekit --help`` and ``edgekit predict`` start fast and TensorFlow-free.
Library errors (``EdgekitError``) become one ``Error:`` line and exit code 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgekit import __version__, errors

# Quiet TensorFlow's C++ start-up chatter; set before any command imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

DEFAULT_EXPORT_DIR = Path("exported")
DEFAULT_MODEL = DEFAULT_EXPORT_DIR / "model.keras"
DEFAULT_DEVICE_MODEL = DEFAULT_EXPORT_DIR / "model_int8.tflite"

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Turn library errors into ``Error: ...`` lines and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except errors.EdgekitError as error:
            raise click.ClickException(str(error)) from None
        except ModuleNotFoundError as error:
            raise click.ClickException(
                f"{error.name} is not installed; this command needs the workstation extra: "
                "pip install 'edgekit[train]'"
            ) from None
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None  # run() prints the one line, exit 130

    return wrapper  # type: ignore[return-value]


def config_or_bad_parameter(factory: Callable[..., Any], **fields: Any) -> Any:
    try:
        return factory(**fields)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder with the four Fashion-MNIST .gz files (default: EDGEKIT_DATA_DIR, Keras' cache, "
         "/usr/share/datasets/fashion-mnist).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train a Fashion-MNIST classifier, export it for devices, and prove the device runs it.

    \b
    Typical run:
      edgekit train --output-dir exported
      edgekit evaluate
      edgekit export --format all
      edgekit verify exported
      edgekit benchmark exported
      edgekit predict shirt.png
    """


@main.command("data")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def data_command(data_dir: Path | None, as_json: bool) -> None:
    """Find and check the dataset; show where it is, counts and class balance."""
    from edgekit.device import datasets

    summary = datasets.summary(datasets.load(data_dir))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"Fashion-MNIST found in {summary['source']}")
    for split in ("train", "test"):
        info: Any = summary[split]
        click.echo(f"  {split}: {info['images']:,} images of {info['shape']}, "
                   f"mean pixel {info['pixel_mean']}")
        click.echo("    " + ", ".join(f"{label} {count:,}" for label, count in info["per_class"].items()))
    click.echo("Next: edgekit train")


@main.command()
@click.option("--arch", "architecture", type=click.Choice(["reference", "edge"]), default="reference",
              show_default=True,
              help="reference: the notebook's CNN; edge: compact int8-friendly residual CNN.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default: the recipe's).")
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--patience", type=int, default=None,
              help="Early-stopping patience in epochs (on validation accuracy).")
@click.option("--seed", type=int, default=None, help="Random seed (default 42).")
@click.option("--validation-fraction", type=float, default=None)
@click.option("--augment/--no-augment", default=None,
              help="Random flip, rotation, zoom and shift while training (default: on).")
@click.option("--limit", type=int, default=None, help="Train on the first N training images only.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON of TrainConfig fields (e.g. the best trial of `edgekit tune`); "
                   "options given on the command line win.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("runs/train"),
              show_default=True, help="Where the model, config, history and checkpoints go.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --output-dir from its last completed epoch "
                   "(same options as the interrupted run).")
@data_dir_option
@friendly_errors
def train(architecture: str, epochs: int | None, batch_size: int | None,
          learning_rate: float | None, patience: int | None, seed: int | None,
          validation_fraction: float | None, augment: bool | None, limit: int | None,
          config_file: Path | None, output_dir: Path, resume: bool, data_dir: Path | None) -> None:
    """Train a Keras model (validation split from the training data; test set untouched).

    Defaults come from the architecture's recipe (see edgekit.workstation.config.RECIPES).
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
    overrides.update({key: value for key, value in dict(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        seed=seed, validation_fraction=validation_fraction, augment=augment,
        limit=limit).items() if value is not None})
    try:
        config = TrainConfig.for_architecture(architecture, **overrides)
    except (ValueError, TypeError) as error:
        raise click.BadParameter(str(error)) from None
    from edgekit.workstation import training

    record = training.train(config, output_dir, data_dir=str(data_dir) if data_dir else None,
                            resume=resume)
    model_path = output_dir / training.MODEL_FILE
    click.echo(f"saved {model_path} ({record['parameters']:,} parameters; best epoch "
               f"{record['best_epoch']} of {record['epochs_run']}, validation accuracy "
               f"{record['validation_accuracy']:.2%}, {record['train_seconds']:.0f} s)")
    click.echo(f"Next: edgekit evaluate --model {model_path}")


@main.command()
@click.option("--arch", "architecture", type=click.Choice(["reference", "edge"]), default="edge",
              show_default=True)
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
@data_dir_option
@friendly_errors
def tune(architecture: str, method: str, max_trials: int, budget_minutes: float, epochs: int,
         limit: int | None, output_dir: Path, data_dir: Path | None) -> None:
    """Search hyperparameters with KerasTuner on the validation split, within a time budget."""
    from edgekit.workstation.config import TrainConfig

    base = config_or_bad_parameter(TrainConfig.for_architecture, architecture=architecture,
                                   epochs=epochs, limit=limit)
    from edgekit.workstation import tune as tune_module

    result = tune_module.tune(base, output_dir, method=method, max_trials=max_trials,
                              budget_minutes=budget_minutes,
                              data_dir=str(data_dir) if data_dir else None, echo=click.echo)
    for line in tune_module.markdown(result["trials"]):
        click.echo(line)
    click.echo(f"best: trial {result['best']['trial']}, validation accuracy "
               f"{result['best']['val_accuracy']:.2%}; wrote {output_dir}/trials.json, trials.md")
    click.echo(f"Next: edgekit train --config {result['best_config_path']} --epochs 40")


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="The .keras model to evaluate.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where reports go (default: reports/ beside the model).")
@data_dir_option
@friendly_errors
def evaluate(model_path: Path, output_dir: Path | None, data_dir: Path | None) -> None:
    """Accuracy, loss, per-class report, confusion matrix and figures on the 10,000 test images."""
    from edgekit.workstation import evaluation

    output_dir = output_dir or model_path.parent / "reports"
    started = time.perf_counter()
    result = evaluation.evaluate(model_path, output_dir, data_dir=str(data_dir) if data_dir else None)
    click.echo(f"test accuracy {result['accuracy']:.2%} ({result['correct']:,}/"
               f"{result['test_images']:,}), loss {result['loss']:.4f}")
    click.echo(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7}")
    for label, scores in result["per_class"].items():
        click.echo(f"{label:<12} {scores['precision']:>9.4f} {scores['recall']:>7.4f} "
                   f"{scores['f1']:>7.4f}")
    click.echo(f"wrote {output_dir}/metrics.json and figures ({time.perf_counter() - started:.1f} s)")
    click.echo(f"Next: edgekit export --model {model_path} --format all")


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="The trained .keras model.")
@click.option("--format", "export_format", type=click.Choice(["tflite", "onnx", "all"]),
              default="all", show_default=True)
@click.option("--quantize", type=click.Choice(["none", "float16", "dynamic", "int8"]),
              multiple=True, help="Precision(s); repeatable. Default: every one the format supports.")
@click.option("--calibration-size", type=int, default=500, show_default=True,
              help="Training images used to calibrate int8 models.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where artifacts and manifest.json go (default: the model's folder).")
@data_dir_option
@friendly_errors
def export(model_path: Path, export_format: str, quantize: tuple[str, ...], calibration_size: int,
           opset: int, output_dir: Path | None, data_dir: Path | None) -> None:
    """Export to TFLite (fp32, fp16, dynamic, int8) and ONNX (fp32, int8) with a manifest."""
    from edgekit.workstation.config import ExportConfig

    config = config_or_bad_parameter(ExportConfig, format=export_format, quantize=quantize,
                                     calibration_size=calibration_size, opset=opset)
    from edgekit.workstation import export as export_module

    output_dir = output_dir or model_path.parent
    artifacts = export_module.export(model_path, output_dir, config,
                                     data_dir=str(data_dir) if data_dir else None, echo=click.echo)
    click.echo(f"{len(artifacts)} artifact(s) and {output_dir}/manifest.json written")
    click.echo(f"Next: edgekit verify {output_dir}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              default=DEFAULT_DEVICE_MODEL, show_default=True, help="Any exported .onnx or .tflite.")
@click.option("--top-k", type=click.IntRange(1, 10), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--threads", type=click.IntRange(1, 64), default=None)
@click.option("--no-verify-sha256", is_flag=True, help="Run a file that differs from its manifest.")
@friendly_errors
def predict(images: tuple[Path, ...], model_path: Path, top_k: int, as_json: bool,
            threads: int | None, no_verify_sha256: bool) -> None:
    """Classify image files (PNG, JPEG, BMP, GIF, ...) with an exported model; no TensorFlow."""
    import numpy as np

    from edgekit.device import images as images_module
    from edgekit.device import runtime

    model = runtime.load(model_path, threads=threads, verify_sha256=not no_verify_sha256)
    prepared = [images_module.prepare(path) for path in images]
    probabilities = model.predict(np.stack([item.pixels for item in prepared]))
    results: list[dict[str, Any]] = []
    for item, row in zip(prepared, probabilities, strict=True):
        order = np.argsort(row)[::-1][:top_k]
        results.append({
            "image": str(item.path),
            "predictions": [{"label": model.labels[i], "class": int(i),
                             "probability": round(float(row[i]), 6)} for i in order],
            "preprocessing": item.steps,
        })
    if as_json:
        click.echo(json.dumps({"model": str(model_path), "results": results}, indent=2,
                              ensure_ascii=False))
        return
    for result in results:
        best = result["predictions"][0]
        line = f"{result['image']}: {best['label']} ({best['probability']:.1%})"
        if top_k > 1:
            line += "  [" + ", ".join(f"{p['label']} {p['probability']:.1%}"
                                      for p in result["predictions"][1:]) + "]"
        click.echo(line)
        notes = [step for step in result["preprocessing"] if step.startswith("inverted")]
        for note in notes:
            click.echo(f"  note: {note}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path), default=DEFAULT_EXPORT_DIR)
@click.option("--golden", is_flag=True,
              help="Check against the small golden bundle (no dataset needed; seconds).")
@click.option("--bar", "bars", multiple=True, metavar="PRECISION.MEASURE=VALUE",
              help="Override a parity bar, e.g. int8.agreement=99.5, fp32.max_abs_diff=1e-5, "
                   "dynamic.accuracy_drop=0.3 (agreement in %, drop in pp). Repeatable.")
@click.option("--threads", type=click.IntRange(1, 64), default=None)
@click.option("--no-write", is_flag=True, help="Do not write reports or update the manifest.")
@data_dir_option
@friendly_errors
def verify(folder: Path, golden: bool, bars: tuple[str, ...], threads: int | None, no_write: bool,
           data_dir: Path | None) -> None:
    """Check every exported artifact against the Keras reference; exit 1 if any bar is missed."""
    from edgekit.device import parity
    from edgekit.device import verify as verify_module

    try:
        chosen = parity.with_overrides(parity.DEFAULT_BARS, list(bars))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--bar") from None
    started = time.perf_counter()
    click.echo(f"verifying {folder} against the reference "
               f"({'golden bundle' if golden else 'all test images'})")
    results = verify_module.verify(folder, chosen, golden=golden,
                                   data_dir=str(data_dir) if data_dir else None, threads=threads,
                                   write=not (no_write or golden), echo=click.echo)
    click.echo("")
    for line in verify_module.table(results):
        click.echo(line)
    failed = [result for result in results if not result.passed]
    seconds = time.perf_counter() - started
    if failed:
        details = "; ".join(f"{result.file}: {', '.join(result.failures())}" for result in failed)
        raise click.ClickException(f"parity failed for {len(failed)} of {len(results)} "
                                   f"artifact(s): {details}")
    written = "" if (no_write or golden) else f"; wrote {folder}/reports/parity.json and parity.md"
    click.echo(f"all {len(results)} artifacts pass parity ({seconds:.1f} s{written})")
    click.echo(f"Next: edgekit benchmark {folder}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path), default=DEFAULT_EXPORT_DIR)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Batch size of the throughput measurement.")
@click.option("--threads", type=click.IntRange(1, 64), default=None,
              help="Threads per runtime (default: the runtime's own choice).")
@click.option("--runs", "single_runs", type=click.IntRange(10, 100_000), default=300,
              show_default=True, help="Timed single-image runs per artifact.")
@click.option("--seconds", "batched_seconds", type=click.FloatRange(0.1, 600), default=3.0,
              show_default=True, help="Duration of the batched measurement per artifact.")
@click.option("--warmup", "warmup_seconds", type=click.FloatRange(0, 60), default=0.5,
              show_default=True,
              help="Seconds of untimed single-image calls before each timed turn.")
@click.option("--no-keras", is_flag=True, help="Skip the Keras baselines.")
@click.option("--sweep", is_flag=True,
              help="Also measure throughput over threads, batch sizes and LiteRT XNNPACK modes.")
@click.option("--training", is_flag=True,
              help="Also measure the training input pipeline with and without augmentation "
                   "(needs the train extra and the dataset).")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path),
              help="Another release folder (e.g. exported/reference) whose artifacts are "
                   "measured in the same run; repeatable.")
@data_dir_option
@friendly_errors
def benchmark(folder: Path, batch_size: int, threads: int | None, single_runs: int,
              batched_seconds: float, warmup_seconds: float, no_keras: bool, sweep: bool,
              training: bool, compare: tuple[Path, ...], data_dir: Path | None) -> None:
    """Latency, throughput, load time, memory and size of every artifact, in one run."""
    from edgekit.device import benchmark as benchmark_module

    config = config_or_bad_parameter(
        benchmark_module.BenchmarkConfig, batch_size=batch_size, threads=threads,
        single_runs=single_runs, batched_seconds=batched_seconds,
        warmup_seconds=warmup_seconds, keras=not no_keras,
        training=training, sweep=sweep)
    result = benchmark_module.run(folder, config, data_dir=str(data_dir) if data_dir else None,
                                  echo=click.echo, compare=compare)
    click.echo("")
    click.echo(f"float32 matmul rate: {result['matmul']['gflops']:.1f} GFLOP/s (best of the run; "
               "each row's % uses the rate measured around its own batches); model: "
               f"{result['macs_per_image']:,} MACs per image")
    for line in benchmark_module.table(result):
        click.echo(line)
    summary = benchmark_module.load_summary(result)
    if summary:
        click.echo(summary)
    paired = benchmark_module.paired_table(result)
    if paired:
        click.echo("\nsingle-image latency, the two releases' models timed call by call in turn:")
        for line in paired:
            click.echo(line)
    click.echo(f"edgekit predict, one image, cold start: "
               f"{result['predict_cold_start']['median_seconds']:.2f} s (median of 5 processes)")
    if result.get("sweep"):
        click.echo("")
        click.echo("throughput sweep (images/s):")
        for line in benchmark_module.sweep_table(result["sweep"]):
            click.echo(line)
    if result.get("training"):
        rates = result["training"]
        click.echo(f"training: {rates['epoch_images_per_second_median']:,.0f} images/s per epoch "
                   f"(median); input pipeline alone: "
                   f"{rates['pipeline']['augmented']['images_per_second']:,.0f} images/s augmented, "
                   f"{rates['pipeline']['plain']['images_per_second']:,.0f} plain "
                   f"({rates['pipeline_headroom']:.1f}x headroom)")
    click.echo(f"wrote {folder}/reports/benchmark.json and benchmark.png")
    click.echo(f"Next: edgekit predict IMAGE --model {folder}/model_int8.tflite")


def run() -> None:
    """Console entry point: every user error, usage errors included, exits with code 1."""
    try:
        code = main.main(standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(1)
    except click.exceptions.Abort:
        # Ctrl-C: every file is written to a temporary name first, so nothing is half-written.
        click.echo("Error: interrupted. Files already written are complete; an interrupted "
                   "`edgekit train` continues with `--resume` and the same --output-dir.", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    run()
