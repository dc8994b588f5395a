"""`edgekit data`: find and check the dataset."""

from __future__ import annotations

import json
from typing import Any

import click

from edgekit.cli.common import data_option, data_spec, friendly_errors


@click.command("data")
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def data_command(data: str, skip_bad_images: bool, as_json: bool) -> None:
    """Find and check the dataset; show where it is, counts and class balance."""
    from edgekit.device import datasets
    from edgekit.workstation import fashion_download  # imports Keras only if it must download

    spec = data_spec(data, skip_bad_images)
    summary = datasets.summary(spec.open(download=fashion_download.download))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    name = "Fashion-MNIST" if spec.is_fashion_mnist else "image folder"
    contract: Any = summary["contract"]
    labels: Any = summary["labels"]
    click.echo(f"{name} found in {summary['source']}: {len(labels)} classes, images "
               f"prepared to {contract['height']}x{contract['width']}x{contract['channels']}")
    warnings: Any = summary["warnings"]
    for warning in warnings:
        click.echo(f"  warning: {warning}")
    for split in ("train", "validation", "test"):
        if split not in summary:
            continue
        info: Any = summary[split]
        click.echo(f"  {split}: {info['images']:,} images of {info['shape']}, "
                   f"mean pixel {info['pixel_mean']}")
        click.echo("    " + ", ".join(f"{label} {count:,}" for label, count in info["per_class"].items()))
    click.echo("Next: edgekit train" + ("" if spec.is_fashion_mnist else f" --data {data}"))
