"""`edgekit micro`: will the int8 model fit a microcontroller, and the C array to flash it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.common import DEFAULT_EXPORT_DIR, friendly_errors


@click.command()
@click.argument("release", type=click.Path(path_type=Path), default=DEFAULT_EXPORT_DIR)
@click.option("--margin", "margin_percent", type=click.FloatRange(0, 400), default=20.0,
              show_default=True, help="Headroom added to the measured arena and the model's bytes "
                                      "before comparing with a board's RAM and flash, in %.")
@click.option("--arena-bytes", type=click.IntRange(1, None), default=None,
              help="Build TFLM's interpreter with this arena (bytes) instead of its default: "
                   "an error if the model does not fit in it.")
@click.option("--c-array", "c_array_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Also write <model>.h and <model>.cc (the model as a byte array, "
                                 "arena size, quantisation, labels) into this folder.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (arena_bytes: measured, arena_with_margin_bytes).")
@click.option("--verbose", is_flag=True, help="Show the runtimes' own log lines.")
@friendly_errors
def micro(release: Path, margin_percent: float, arena_bytes: int | None, c_array_dir: Path | None,
          as_json: bool, verbose: bool) -> None:
    """Flash, tensor arena (measured by TensorFlow Lite Micro) and ops of RELEASE's int8 model
    (a release folder or a .tflite file), and which microcontroller boards it fits."""
    from edgekit.device import quiet
    from edgekit.device.micro import c_array, report

    quiet.set_verbose(verbose)
    measured = report.build(release, margin_percent, arena_bytes)
    written = []
    if c_array_dir is not None:
        written = c_array.write(c_array_dir, Path(measured["model"]), measured)
        measured["c_array"] = [str(path) for path in written]
    if as_json:
        click.echo(json.dumps(measured, indent=2, ensure_ascii=False))
        return
    for line in report.table(measured):
        click.echo(line)
    for path in written:
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    click.echo(f"Next: edgekit verify {release if Path(release).is_dir() else DEFAULT_EXPORT_DIR}"
               "  (its '@ tflite-micro' row checks TFLM's predictions on the test set)")
