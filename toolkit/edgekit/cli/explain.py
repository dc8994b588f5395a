"""`edgekit explain`: occlusion maps of every artifact, the Keras model's gradient map, faithfulness.

Occlusion runs through edgekit.runtime, so the command works on the device install; the
Keras model's panels (Grad-CAM and its occlusion map) are added where TensorFlow is installed.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.common import DEFAULT_EXPORT_DIR, data_spec, friendly_errors, recorded_data_option

if TYPE_CHECKING:
    from edgekit.contract import InputContract
    from edgekit.device import runtime
    from edgekit.device.explain import parity as parity_module

NO_TENSORFLOW = ("note: TensorFlow is not installed, so Grad-CAM and the Keras model's occlusion "
                 "map are left out (pip install 'edgekit[train]' adds them)")
METHODS = ("hirescam", "gradcam", "layercam")  # the first is the default (docs/explain.md)
BAR_HELP = ("Override an explanation bar, e.g. int8.rank_correlation=0.9, fp32.top_overlap=0.99 "
            "(mean rank correlation and top-10 % IoU with the Keras maps, 0..1). Repeatable.")


@click.command()
@click.argument("folder", type=click.Path(path_type=Path), default=DEFAULT_EXPORT_DIR)
@click.option("--image", "image_paths", multiple=True, type=click.Path(path_type=Path),
              help="An image file to explain (prepared as the release's contract says). Repeatable.")
@click.option("--index", "indices", multiple=True, type=click.IntRange(0), metavar="N",
              help="A test-set image to explain, by index. Repeatable.")
@click.option("--wrong", type=click.IntRange(0), default=0, metavar="N",
              help="Explain the first N test images the int8 artifact gets wrong.")
@click.option("--class", "class_name", metavar="NAME|INDEX",
              help="The class every map explains. Default: the Keras model's predicted class "
                   "(without TensorFlow, the first artifact's).")
@click.option("--model", "model_paths", multiple=True, type=click.Path(path_type=Path),
              help="An artifact (.tflite, .onnx) to include, or the .keras model. Repeatable. "
                   "Default: every artifact of the manifest, plus its Keras model.")
@click.option("--no-keras", is_flag=True, help="Leave out the Keras model (and Grad-CAM).")
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help="The Keras model's gradient map: HiResCAM (faithful for the released "
                   "networks' Flatten head; measured in docs/explain.md), Grad-CAM or LayerCAM.")
@click.option("--layer", help="The layer the gradient map reads (default: the last convolution).")
@click.option("--patch", type=click.IntRange(1), default=None,
              help="Occlusion patch side in pixels (default: about a seventh of the input).")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="Occlusion stride in pixels (default: half the patch).")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where the PNGs and explain.json go (default: FOLDER/reports/explain/).")
@click.option("--parity", is_flag=True,
              help="Instead: explanation parity of every artifact on the release's stored sample "
                   "(no TensorFlow needed); writes FOLDER/reports/explain.json and explain.png.")
@click.option("--bar", "bars", multiple=True, metavar="PRECISION.MEASURE=VALUE", help=BAR_HELP)
@click.option("--write-reference", is_flag=True,
              help="Instead: store the Keras model's maps of a seeded sample of test images in "
                   "the release (explain_reference.npz), for --parity and verify --explanations.")
@click.option("--sample", type=click.IntRange(2, 100_000), default=200, show_default=True,
              help="With --write-reference: how many test images.")
@click.option("--seed", type=int, default=42, show_default=True,
              help="With --write-reference: the seed that draws them.")
@click.option("--threads", type=click.IntRange(1, 64), default=None)
@recorded_data_option
@friendly_errors
def explain(folder: Path, image_paths: tuple[Path, ...], indices: tuple[int, ...], wrong: int,
            class_name: str | None, model_paths: tuple[Path, ...], no_keras: bool,
            method: str, layer: str | None, patch: int | None, stride: int | None, output_dir: Path | None,
            parity: bool, bars: tuple[str, ...], write_reference: bool, sample: int, seed: int,
            threads: int | None, data: str | None, skip_bad_images: bool) -> None:
    """Show where each model looks: a gradient map of the Keras model (HiResCAM by default),
    occlusion maps of every artifact, and how faithful each map is (deletion/insertion AUCs).

    \b
    Examples:
      edgekit explain exported --index 17 --wrong 3
      edgekit explain exported --image shirt.png --class Coat
      edgekit explain exported --write-reference     (workstation: the Keras maps of a sample)
      edgekit explain exported --parity              (explanation parity, no TensorFlow)
    """
    spec = data_spec(data, skip_bad_images)
    if bars and not parity:
        raise click.BadParameter("bars apply to explanation parity: add --parity.",
                                 param_hint="--bar")
    if write_reference:
        from edgekit.workstation import explain_reference

        explain_reference.write_reference_maps(folder, None, sample, seed, patch, stride, layer,
                                               spec, echo=click.echo)
        click.echo(f"Next: edgekit verify {folder} --explanations")
        return
    if parity:
        measurement = explanation_parity(folder, explanation_bars(bars), spec, threads,
                                         write=True, echo=click.echo)
        if not measurement.passed:
            raise click.ClickException(failure_message(measurement))
        click.echo(f"all {len(measurement.results)} artifacts pass explanation parity")
        return
    explain_inputs(folder, image_paths, indices, wrong, class_name, model_paths, no_keras,
                   (method, layer), patch, stride, output_dir, threads, spec)


def explanation_bars(overrides: tuple[str, ...], option: str = "--bar") -> dict[str, Any]:
    from edgekit.device.explain import parity as parity_module

    try:
        return parity_module.with_overrides(parity_module.DEFAULT_BARS, list(overrides))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


def explanation_parity(folder: Path, bars: dict[str, Any], spec: Any, threads: int | None,
                       write: bool, echo: Callable[[str], None]) -> parity_module.Measurement:
    """Measure, print the table, write the reports: what `verify --explanations` adds."""
    from edgekit import manifest as manifest_module
    from edgekit.device.explain import parity as parity_module

    started = time.perf_counter()
    echo(f"explanation parity of {folder}: occlusion maps against the Keras model's")
    measurement = parity_module.measure(folder, bars, spec=spec, threads=threads, echo=echo)
    echo("")
    for line in parity_module.table(measurement):
        echo(line)
    record = (manifest_module.load(folder).get("reference") or {}).get("explanations") or {}
    if measurement.faithfulness is not None and measurement.faithfulness.scores is not None:
        echo(f"faithfulness of the Keras model's maps, through "
             f"{measurement.faithfulness.scored_on} (lower deletion, higher insertion is better):")
        for line in faithfulness_lines(measurement):
            echo(line)
    elif measurement.faithfulness is not None:
        echo(f"faithfulness could not be scored: {measurement.faithfulness.error}")
    sanity = record.get("sanity") or {}
    for name, result in sanity.items():
        echo(sanity_line(name, result))
    for method, result in (record.get("versus_occlusion") or {}).items():
        echo(f"{method} against occlusion (a number, not a check): rank correlation "
             f"{result['rank_correlation']['value']} (chance {result['rank_correlation']['chance']})"
             f", top-10 % IoU {result['top_overlap']['value']} "
             f"(chance {result['top_overlap']['chance']})")
    written = ""
    if write:
        paths = parity_module.write_reports(folder, measurement)
        written = "; wrote " + " and ".join(str(path) for path in paths)
    echo(f"explanations measured on {measurement.source} "
         f"({time.perf_counter() - started:.1f} s{written})")
    return measurement


def faithfulness_lines(measurement: parity_module.Measurement) -> list[str]:
    from edgekit.device.explain import faithfulness

    scored = measurement.faithfulness
    if scored is None or scored.scores is None:
        return []
    return faithfulness.lines(scored.scores, measurement.reference.default_method)


def sanity_line(name: str, result: dict[str, Any]) -> str:
    """``sanity check gradcam_vs_occlusion: FAILED (rank_correlation 0.006, chance 0.009 ✗; ...)``"""
    parts = []
    for measure, check in result.items():
        if isinstance(check, dict):
            against = ", ".join(f"{key} {value}" for key, value in check.items()
                                if key not in ("value", "passed"))
            parts.append(f"{measure} {check.get('value')}, {against} "
                         f"{'✓' if check.get('passed') else '✗'}")
    return (f"sanity check {name}: {'passed' if result.get('passed') else 'FAILED'} "
            f"({'; '.join(parts)})")


def failure_message(measurement: parity_module.Measurement) -> str:
    from edgekit.device.explain import parity as parity_module

    return parity_module.failure_message(measurement)


def explain_inputs(folder: Path, image_paths: tuple[Path, ...], indices: tuple[int, ...],
                   wrong: int, class_name: str | None, model_paths: tuple[Path, ...],
                   no_keras: bool, gradient: tuple[str, str | None], patch: int | None,
                   stride: int | None, output_dir: Path | None, threads: int | None,
                   spec: Any) -> None:
    from edgekit import manifest as manifest_module
    from edgekit.device.explain import inputs, occlusion
    from edgekit.device.explain import session as session_module

    started = time.perf_counter()
    manifest = manifest_module.load(folder) if manifest_module.path_in(folder).is_file() else None
    artifacts = load_artifacts(folder, manifest, model_paths, threads)
    contract = (manifest_module.contract_of(manifest, folder) if manifest is not None
                else artifacts[0][1].contract)
    try:
        settings = occlusion.settings_for(contract, patch, stride)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--patch/--stride") from None
    try:
        target = inputs.parse_class(class_name, contract.labels)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--class") from None
    for path, model in artifacts:
        if model.contract.shape != contract.shape or model.labels != contract.labels:
            raise click.ClickException(f"{path} takes {model.contract.describe_shape()} images "
                                       f"with {model.contract.num_classes} classes, unlike "
                                       f"{contract.describe_shape()} with {contract.num_classes}"
                                       " classes of the release; explain one release at a time.")
    keras, notes = keras_part(folder, manifest, contract, model_paths, no_keras, *gradient)
    names = [path.name for path, _ in artifacts]
    subjects = ([] if keras is None else [keras.subject]) + [
        session_module.Subject(path.name if names.count(path.name) == 1 else str(path),
                               model.predict) for path, model in artifacts]
    if not subjects:
        raise click.ClickException("no model to explain: pass --model FILE.onnx|FILE.tflite "
                                   "(a .keras model needs TensorFlow and no --no-keras).")
    if not (image_paths or indices or wrong):
        indices = (0,)
        notes.append("note: no --image, --index or --wrong given: explaining test image 0")
    for note in notes:
        click.echo(note)
    test = inputs.TestImages(manifest or {}, contract, spec)
    chosen = inputs.gather(contract, test, image_paths, indices, wrong,
                           lambda: int8_model(folder, manifest, artifacts, threads), click.echo)
    fills = fill_images(folder, manifest, contract, test, notes)
    made = session_module.explain(
        chosen, subjects, contract.background, settings, target,
        None if keras is None else keras.gradcam, "" if keras is None else keras.title, fills)
    target_dir = output_dir if output_dir is not None else folder / "reports" / "explain"
    session_module.write(made, contract.labels, target_dir, notes, echo=click.echo)
    for line in session_module.score_lines(made):
        click.echo(line)
    click.echo(f"explained {len(chosen.sources)} input(s) with {len(subjects)} model(s), patch "
               f"{settings.patch}, stride {settings.stride} ({time.perf_counter() - started:.1f} s)")
    if manifest is not None:
        click.echo(f"Next: edgekit verify {folder} --explanations")


def fill_images(folder: Path, manifest: dict[str, Any] | None, contract: InputContract,
                test: Any, notes: list[str]) -> dict[str, Any]:
    """The fills of the deletion/insertion scores: background, and the dataset's mean image
    (stored in the release's explanation reference, else from a test split already read)."""
    import numpy as np

    from edgekit import errors
    from edgekit.device.explain import faithfulness
    from edgekit.device.explain import parity as parity_module

    mean = None
    if manifest is not None:
        try:
            mean = parity_module.load_reference_maps(folder, manifest).mean_image
        except errors.EdgekitError:
            mean = None
    if mean is None and getattr(test, "_split", None) is not None:
        mean = test.split.images.mean(axis=0, dtype=np.float64)
    fills = {"background": faithfulness.fill_images("background", contract.background, None,
                                                    contract.shape)}
    if mean is None:
        notes.append("note: no dataset mean image here: the maps are scored with the "
                     "background fill only")
        click.echo(notes[-1])
    else:
        fills["mean"] = faithfulness.fill_images("mean", contract.background, mean,
                                                 contract.shape)
    return fills


def load_artifacts(folder: Path, manifest: dict[str, Any] | None, model_paths: tuple[Path, ...],
                   threads: int | None) -> list[tuple[Path, runtime.LoadedModel]]:
    """The device artifacts to explain, each loaded (sha256-checked) before anything is made."""
    from edgekit import manifest as manifest_module
    from edgekit.device import runtime

    paths = [path for path in model_paths if path.suffix.lower() != ".keras"]
    if not model_paths and manifest is not None:
        paths = [manifest_module.safe_file(folder, entry["file"]) for entry in manifest["artifacts"]]
    if not paths and manifest is None:
        raise click.ClickException(f"no manifest.json in {folder} and no --model FILE.onnx|.tflite "
                                   "given; point at an exported folder or pass --model.")
    return [(path, runtime.load(path, threads=threads)) for path in paths]


def keras_part(folder: Path, manifest: dict[str, Any] | None, contract: InputContract,
               model_paths: tuple[Path, ...], no_keras: bool, method: str,
               layer: str | None) -> tuple[Any, list[str]]:
    """The Keras model's explainer where TensorFlow is installed, and the notes to print."""
    from edgekit import manifest as manifest_module

    if no_keras:
        return None, []
    if importlib.util.find_spec("tensorflow") is None:
        return None, [NO_TENSORFLOW + ("; --layer is ignored" if layer else "")]
    given = [path for path in model_paths if path.suffix.lower() == ".keras"]
    reference = (manifest or {}).get("reference") or {}
    if given:
        path = given[0]
    elif manifest is not None and reference.get("file"):
        path = manifest_module.safe_file(folder, reference["file"])
    else:
        return None, ["note: no Keras model recorded: Grad-CAM is left out (pass --model "
                      "FILE.keras)"]
    from edgekit.workstation import explain_reference

    explainer = explain_reference.keras_explainer(path, contract, layer, method)
    return explainer, [] if explainer.note is None else [f"note: {explainer.note}"]


def int8_model(folder: Path, manifest: dict[str, Any] | None,
               artifacts: list[tuple[Path, runtime.LoadedModel]],
               threads: int | None) -> runtime.LoadedModel:
    """The int8 artifact --wrong asks about: a chosen one, else the release's first."""
    from edgekit import errors
    from edgekit import manifest as manifest_module
    from edgekit.device import runtime

    precision = {entry["file"]: entry["precision"] for entry in (manifest or {}).get("artifacts", [])}
    for path, model in artifacts:
        if precision.get(path.name) == "int8" or model.input.dtype in ("int8", "uint8"):
            return model
    for name, kind in precision.items():
        if kind == "int8":
            return runtime.load(manifest_module.safe_file(folder, name), threads=threads)
    raise errors.ModelError(f"--wrong needs an int8 artifact, and {folder} has none; pass one "
                            "with --model.")
