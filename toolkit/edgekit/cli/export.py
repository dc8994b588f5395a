"""`edgekit export` (workstation)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import (
    DEFAULT_MODEL,
    config_or_bad_parameter,
    data_spec,
    friendly_errors,
    recorded_data_option,
)


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True,
              help="The trained model: a .keras file, a legacy .h5 file, or a SavedModel folder "
                   "(also Keras' model.export() archive).")
@click.option("--format", "export_format", type=click.Choice(["tflite", "onnx", "all"]),
              default="all", show_default=True)
@click.option("--quantize", type=click.Choice(["none", "float16", "dynamic", "int8"]),
              multiple=True, help="Precision(s); repeatable. Default: every one the format supports.")
@click.option("--calibration-size", type=int, default=500, show_default=True,
              help="Training images used to calibrate int8 models.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True,
              help="How ONNX Runtime sets the int8 ONNX file's activation ranges from the "
                   "calibration images (TFLite's converter uses min/max).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where artifacts and manifest.json go (default: the model's folder).")
@recorded_data_option
@click.option("--input-range", type=click.Choice(["0-255", "0-1", "-1-1", "caffe", "torch"]),
              default=None,
              help="What input a model trained elsewhere expects: a pixel range, or Keras "
                   "Applications' caffe (BGR, ImageNet mean subtracted) or torch (ImageNet "
                   "mean/std) preprocessing (default: 0-255 when it starts with a Rescaling or "
                   "Normalization layer). It is added to the graph, so every artifact takes raw "
                   "0-255 pixels.")
@click.option("--output", "output_kind", type=click.Choice(["probabilities", "logits"]),
              default=None, help="What the model returns (default: probabilities when it ends "
                                 "in a softmax, else logits, which get a softmax added).")
@click.option("--explanations/--no-explanations", default=True, show_default=True,
              help="Store the Keras model's occlusion maps of a test sample, so that "
                   "`edgekit verify --explanations` needs no TensorFlow.")
@click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER|auto",
              help="Keep this Keras layer float in the int8 and dynamic files (repeatable); "
                   "'auto' searches, each quantised file on its own, until it passes parity on "
                   "the validation split: cross-layer equalisation, then the worst layers of "
                   "`verify --layers` kept float one at a time, then the calibration method and "
                   "size, then pairs of layers (docs/quantization.md).")
@friendly_errors
def export(model_path: Path, export_format: str, quantize: tuple[str, ...], calibration_size: int,
           calibration_method: str, opset: int, output_dir: Path | None, data: str | None,
           skip_bad_images: bool, input_range: str | None, output_kind: str | None, explanations: bool,
           keep_float: tuple[str, ...]) -> None:
    """Export to TFLite (fp32, fp16, dynamic, int8) and ONNX (fp32, int8) with a manifest.

    Works on a model trained by `edgekit train` or a Keras image classifier trained
    elsewhere (give its dataset with --data DIR)."""
    from edgekit.workstation.config import ExportConfig

    config = config_or_bad_parameter(ExportConfig, format=export_format, quantize=quantize,
                                     calibration_size=calibration_size,
                                     calibration_method=calibration_method, opset=opset,
                                     explanations=explanations,
                                     keep_float=tuple(n for n in keep_float if n != "auto"))
    from edgekit.workstation import export as export_module

    output_dir = output_dir or model_path.parent
    if "auto" in keep_float:
        if len(keep_float) > 1:
            raise click.BadParameter("auto searches on its own; give no layer names with it.",
                                     param_hint="--keep-float")
        from edgekit.workstation.quantization import search

        artifacts = search.export_auto(model_path, output_dir, config,
                                       data_spec(data, skip_bad_images), input_range, output_kind,
                                       echo=click.echo)
    else:
        artifacts = export_module.export(model_path, output_dir, config,
                                         spec=data_spec(data, skip_bad_images),
                                         input_range=input_range, output=output_kind,
                                         echo=click.echo)
    click.echo(f"{len(artifacts)} artifact(s) and {output_dir}/manifest.json written")
    click.echo(f"Next: edgekit verify {output_dir}")
