"""`edgekit export` (workstation)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import (
    DEFAULT_MODEL,
    config_or_bad_parameter,
    data_dir_option,
    friendly_errors,
    optional_str,
)


@click.command()
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
                                     data_dir=optional_str(data_dir), echo=click.echo)
    click.echo(f"{len(artifacts)} artifact(s) and {output_dir}/manifest.json written")
    click.echo(f"Next: edgekit verify {output_dir}")
