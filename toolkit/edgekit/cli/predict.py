"""`edgekit predict`: image files through an exported model, TensorFlow-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import DEFAULT_DEVICE_MODEL, friendly_errors


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              default=DEFAULT_DEVICE_MODEL, show_default=True, help="Any exported .onnx or .tflite.")
@click.option("--top-k", type=click.IntRange(1, 10), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--threads", type=click.IntRange(1, 64), default=None)
@click.option("--no-verify-sha256", is_flag=True, help="Run a file that differs from its manifest.")
@click.option("--runtime", "runtime_name", type=click.Choice(["default", "tflite-micro"]),
              default="default", show_default=True,
              help="tflite-micro: run an int8 .tflite under TensorFlow Lite Micro (edgekit[micro]).")
@click.option("--verbose", is_flag=True, help="Show the runtimes' own log lines (LiteRT's INFO, ...).")
@friendly_errors
def predict(images: tuple[Path, ...], model_path: Path, top_k: int, as_json: bool,
            threads: int | None, no_verify_sha256: bool, runtime_name: str, verbose: bool) -> None:
    """Classify image files (PNG, JPEG, BMP, GIF, ...) with an exported model; no TensorFlow."""
    import numpy as np

    from edgekit.device import images as images_module
    from edgekit.device import quiet, runtime

    quiet.set_verbose(verbose)
    model = runtime.load(model_path, threads=threads, verify_sha256=not no_verify_sha256,
                         runtime=runtime_name)
    prepared = [images_module.prepare(path, model.contract) for path in images]
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
