"""`edgekit verify`: parity of every artifact against the Keras reference."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from edgekit.cli import explain
from edgekit.cli.common import DEFAULT_EXPORT_DIR, data_spec, friendly_errors, recorded_data_option


@click.command()
@click.argument("folder", type=click.Path(path_type=Path), default=DEFAULT_EXPORT_DIR)
@click.option("--golden", is_flag=True,
              help="Check against the small golden bundle (no dataset needed; seconds).")
@click.option("--bar", "bars", multiple=True, metavar="PRECISION.MEASURE=VALUE",
              help="Override a parity bar, e.g. int8.agreement=99.5, fp32.max_abs_diff=1e-5, "
                   "dynamic.accuracy_drop=0.3 (agreement in %, drop in pp). Repeatable.")
@click.option("--threads", type=click.IntRange(1, 64), default=None)
@click.option("--no-write", is_flag=True, help="Do not write reports or update the manifest.")
@click.option("--explanations", is_flag=True,
              help="Also check each artifact's occlusion maps against the Keras model's stored "
                   "ones (explanation parity); writes reports/explain.json and explain.png.")
@click.option("--explanation-bar", "explanation_overrides", multiple=True,
              metavar="PRECISION.MEASURE=VALUE", help=explain.BAR_HELP)
@click.option("--layers", is_flag=True,
              help="Instead of parity: which layers each quantised artifact's error comes from, "
                   "on validation images (needs TensorFlow); writes reports/layers.json and .png.")
@recorded_data_option
@friendly_errors
def verify(folder: Path, golden: bool, bars: tuple[str, ...], threads: int | None, no_write: bool,
           explanations: bool, explanation_overrides: tuple[str, ...], layers: bool,
           data: str | None, skip_bad_images: bool) -> None:
    """Check every exported artifact against the Keras reference; exit 1 if any bar is missed."""
    if layers:
        from edgekit.cli import layers as layers_command

        layers_command.diagnose(folder, data_spec(data, skip_bad_images), write=not no_write)
        return
    from edgekit.device import parity
    from edgekit.device import verify as verify_module

    try:
        chosen = parity.with_overrides(parity.DEFAULT_BARS, list(bars))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--bar") from None
    explanation_bars = explain.explanation_bars(explanation_overrides, "--explanation-bar")
    started = time.perf_counter()
    click.echo(f"verifying {folder} against the reference "
               f"({'golden bundle' if golden else 'all test images'})")
    results = verify_module.verify(folder, chosen, golden=golden,
                                   spec=data_spec(data, skip_bad_images), threads=threads,
                                   write=not (no_write or golden), echo=click.echo,
                                   check_graph=onnx_checker())
    click.echo("")
    for line in verify_module.table(results):
        click.echo(line)
    for line in verify_module.warnings(results):
        click.echo(line)
    explained = None
    if explanations:
        click.echo("")
        explained = explain.explanation_parity(folder, explanation_bars,
                                               data_spec(data, skip_bad_images), threads,
                                               write=not (no_write or golden), echo=click.echo)
    failed = [result for result in results if not result.passed]
    seconds = time.perf_counter() - started
    if failed:
        if any(result.precision in ("int8", "dynamic") for result in failed):
            click.echo(f"To see which layers are to blame: edgekit verify {folder} --layers")
        details = "; ".join(f"{result.file}: {', '.join(result.failures())}" for result in failed)
        raise click.ClickException(f"parity failed for {len(failed)} of {len(results)} "
                                   f"artifact(s): {details}")
    if explained is not None and not explained.passed:
        raise click.ClickException(explain.failure_message(explained))
    written = "" if (no_write or golden) else f"; wrote {folder}/reports/parity.json and parity.md"
    nested = sum(result.nested_under is not None for result in results)
    rows = f", with {nested} TFLM row{'s' * (nested != 1)}" if nested else ""
    click.echo(f"all {len(results) - nested} artifacts pass parity{rows} ({seconds:.1f} s{written})")
    click.echo(f"Next: edgekit benchmark {folder}")


def onnx_checker() -> Callable[[Path], None] | None:
    """``onnx.checker`` where the onnx package is installed (a workstation), else nothing."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        return None
    from edgekit.workstation import onnx_check

    return onnx_check.check_onnx_graph
