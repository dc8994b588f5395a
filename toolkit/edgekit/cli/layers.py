"""`edgekit verify --layers`: the per-layer diagnosis of quantised artifacts (workstation)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from edgekit.device import datasets


def diagnose(folder: Path, spec: datasets.DataSpec | None, write: bool = True) -> None:
    missing = [name for name in ("tensorflow", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"verify --layers runs the float Keras model, which needs {' and '.join(missing)}: "
            "install the workstation extra, pip install 'edgekit[train]'")
    from edgekit.workstation.quantization import diagnose as diagnose_module
    from edgekit.workstation.quantization import report

    results = diagnose_module.diagnose_release(folder, spec=spec, write=write, echo=click.echo)
    for result in results:
        click.echo("")
        for line in report.table(result):
            click.echo(line)
    if write:
        click.echo(f"\nwrote {folder}/reports/{diagnose_module.REPORT_FILE} and "
                   f"{diagnose_module.PLOT_FILE}")
