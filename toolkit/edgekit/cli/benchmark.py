"""`edgekit benchmark`: latency, throughput, memory and size in one run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.common import (
    DEFAULT_EXPORT_DIR,
    config_or_bad_parameter,
    data_spec,
    friendly_errors,
    recorded_data_option,
)

if TYPE_CHECKING:
    from edgekit.device.benchmark import BenchmarkConfig


@click.command()
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
@recorded_data_option
@friendly_errors
def benchmark(folder: Path, batch_size: int, threads: int | None, single_runs: int,
              batched_seconds: float, warmup_seconds: float, no_keras: bool, sweep: bool,
              training: bool, compare: tuple[Path, ...], data: str | None,
              skip_bad_images: bool) -> None:
    """Latency, throughput, load time, memory and size of every artifact, in one run."""
    from edgekit.device import benchmark as benchmark_module

    config = config_or_bad_parameter(
        benchmark_module.BenchmarkConfig, batch_size=batch_size, threads=threads,
        single_runs=single_runs, batched_seconds=batched_seconds,
        warmup_seconds=warmup_seconds, keras=not no_keras,
        training=training, sweep=sweep)
    result = benchmark_module.run(folder, config, spec=data_spec(data, skip_bad_images),
                                  echo=click.echo, compare=compare, **workstation_parts(config))
    plot(result, folder / "reports")
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


def workstation_parts(config: BenchmarkConfig) -> dict[str, Any]:
    """The TensorFlow measurements the run asks for, where TensorFlow is installed.

    Without it the Keras baselines are skipped with a note (a device install), while
    ``--training`` fails at once, before minutes of measuring, as it would after them.
    """
    if importlib.util.find_spec("tensorflow") is None:
        if config.training:
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        return {}
    from edgekit.workstation import benchmark_keras

    return {"keras_baselines": benchmark_keras.keras_baselines if config.keras else None,
            "training_throughput": benchmark_keras.training_throughput if config.training else None}


def plot(result: dict[str, Any], reports: Path) -> None:
    """The benchmark figure, where matplotlib is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        click.echo("matplotlib not installed: skipping benchmark plots (pip install 'edgekit[train]')")
        return
    from edgekit.workstation import benchmark_plot

    benchmark_plot.plot(result, reports)
