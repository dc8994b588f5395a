"""`edgekit data`: find and check the dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import data_dir_option, friendly_errors


@click.command("data")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def data_command(data_dir: Path | None, as_json: bool) -> None:
    """Find and check the dataset; show where it is, counts and class balance."""
    from edgekit.device import datasets
    from edgekit.workstation import fashion_download  # imports Keras only if it must download

    summary = datasets.summary(datasets.load(data_dir, download=fashion_download.download))
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
