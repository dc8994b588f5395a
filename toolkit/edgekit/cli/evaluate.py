"""`edgekit evaluate` (workstation)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from edgekit.cli.common import DEFAULT_MODEL, data_spec, friendly_errors, recorded_data_option


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="The .keras model to evaluate.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where reports go (default: reports/ beside the model).")
@recorded_data_option
@friendly_errors
def evaluate(model_path: Path, output_dir: Path | None, data: str | None,
             skip_bad_images: bool) -> None:
    """Accuracy, loss, per-class report, confusion matrix and figures on the test split."""
    from edgekit.workstation import evaluation

    output_dir = output_dir or model_path.parent / "reports"
    started = time.perf_counter()
    result = evaluation.evaluate(model_path, output_dir, data_spec(data, skip_bad_images))
    click.echo(f"test accuracy {result['accuracy']:.2%} ({result['correct']:,}/"
               f"{result['test_images']:,}), loss {result['loss']:.4f}")
    click.echo(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7}")
    for label, scores in result["per_class"].items():
        click.echo(f"{label[:12]:<12} {scores['precision']:>9.4f} {scores['recall']:>7.4f} "
                   f"{scores['f1']:>7.4f}")
    click.echo(f"wrote {output_dir}/metrics.json and figures ({time.perf_counter() - started:.1f} s)")
    click.echo(f"Next: edgekit export --model {model_path} --format all")
