"""What ``edgekit explain`` computes and writes for its inputs: maps, a row of panels each, JSON.

The models come as :class:`Subject` callables, so this module never needs TensorFlow: the
command line wraps each artifact's ``runtime.predict`` and, where TensorFlow is installed,
the Keras model's forward pass and its Grad-CAM.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit import fileio
from edgekit.device.explain import compare, faithfulness, occlusion, panels

GradCam = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images, classes) -> maps [N, H, W]
REPORT_JSON = "explain.json"


@dataclasses.dataclass(frozen=True)
class Subject:
    """A model to explain: its name and its forward pass (uint8 pixels -> probabilities)."""

    name: str
    predict: occlusion.Predict
    is_keras: bool = False


@dataclasses.dataclass(frozen=True)
class Inputs:
    pixels: np.ndarray  # uint8 [N, H, W, C]
    sources: list[str]  # what each input is: a file name, "test image 17"
    names: list[str]  # the stem of each input's PNG
    labels: list[int | None]  # the true class, where known


@dataclasses.dataclass(frozen=True)
class ModelMaps:
    name: str
    maps: np.ndarray  # [N, H, W]
    probabilities: np.ndarray  # [N, classes]
    agreement: compare.Agreement | None  # with the Keras model's maps, when it is explained


@dataclasses.dataclass
class Explanation:
    inputs: Inputs
    classes: np.ndarray  # the class every map of an input explains
    models: list[ModelMaps]  # the Keras model first, when it is explained
    gradcam: np.ndarray | None
    gradcam_title: str
    gradcam_agreement: compare.Agreement | None  # Grad-CAM against the Keras occlusion map
    settings: occlusion.Settings
    keras: str | None  # the Keras model's name, when it is explained
    # Per model: deletion/insertion AUCs of its occlusion map (and the Keras model's gradient
    # map, as "gradient"), beside a random ranking, through that model's own forward pass.
    scores: dict[str, faithfulness.Scores] = dataclasses.field(default_factory=dict)


def explain(inputs: Inputs, subjects: list[Subject], background: int,
            settings: occlusion.Settings, target_class: int | None = None,
            gradcam: GradCam | None = None, gradcam_title: str = "Grad-CAM",
            fills: dict[str, np.ndarray] | None = None) -> Explanation:
    """Occlusion maps of every subject (and the gradient map) for one class per input:
    ``target_class``, else the class the first subject (the Keras model, when present)
    predicts; with ``fills`` (name -> uint8 [H, W, C]), each map's deletion/insertion AUCs."""
    first = subjects[0]
    classes = None if target_class is None else np.full(len(inputs.pixels), target_class)
    made = {first.name: occlusion.occlusion_maps(first.predict, inputs.pixels, background,
                                                  settings, classes)}
    classes = made[first.name].classes
    for subject in subjects[1:]:
        made[subject.name] = occlusion.occlusion_maps(subject.predict, inputs.pixels,
                                                      background, settings, classes)
    mask = occlusion.support(inputs.pixels, background, settings)
    keras = next((s.name for s in subjects if s.is_keras), None)
    reference = None if keras is None else made[keras].maps
    models = [ModelMaps(s.name, made[s.name].maps, made[s.name].probabilities,
                        None if reference is None or s.is_keras
                        else compare.agreement(made[s.name].maps, reference, mask))
              for s in subjects]
    cams = None if gradcam is None else gradcam(inputs.pixels, classes)
    cam_agreement = (None if cams is None or reference is None
                     else compare.agreement(cams, reference, mask))
    scores = {}
    for subject in subjects if fills else []:
        maps = {"occlusion": made[subject.name].maps}
        if subject.is_keras and cams is not None:
            maps["gradient"] = cams
        scores[subject.name] = faithfulness.score(subject.predict, inputs.pixels, classes, maps,
                                                  fills or {}, settings.patch)
    return Explanation(inputs, classes, models, cams, gradcam_title, cam_agreement, settings,
                       keras, scores)


def _percent(probabilities: np.ndarray, labels: tuple[str, ...]) -> str:
    best = int(probabilities.argmax())
    return f"{labels[best]} {probabilities[best]:.1%}"


def map_row(image: np.ndarray, heading: str, input_lines: tuple[str, ...],
            labels: tuple[str, ...], models: list[tuple[str, np.ndarray, np.ndarray, str]],
            gradcam: tuple[str, np.ndarray, np.ndarray] | None) -> Image.Image:
    """One input's panels: the image, Grad-CAM over it (``(title, map, probabilities)``, of
    the first model: Keras), then each model's occlusion map (``(name, map, probabilities,
    note)``), Keras first."""
    row = [panels.Panel(input_lines, "image", image)]
    if gradcam is not None:
        title, cam, probabilities = gradcam
        row.append(panels.Panel((models[0][0], title, _percent(probabilities, labels)), "heat",
                                image, cam))
    for name, maps, probabilities, note in models:
        lines = (name, "occlusion", _percent(probabilities, labels)) + ((note,) if note else ())
        row.append(panels.Panel(lines, "signed", image, maps))
    return panels.row(row, heading)


def agreement_note(agreement: compare.Agreement | None, number: int) -> str:
    if agreement is None:
        return ""
    return (f"vs Keras: rho {agreement.rank_correlation[number]:.2f}, "
            f"IoU {agreement.top_overlap[number]:.2f}")


def write(explanation: Explanation, labels: tuple[str, ...], output_dir: Path,
          notes: list[str], echo: Callable[[str], None] = print) -> list[Path]:
    """One PNG per input and ``explain.json``, each written atomically."""
    output_dir = fileio.ensure_dir(output_dir)
    written = []
    for number, source in enumerate(explanation.inputs.sources):
        target = output_dir / f"{explanation.inputs.names[number]}.png"
        panels.save_png(_input_row(explanation, labels, number), target)
        echo(f"wrote {target} ({fileio.human_size(target.stat().st_size)}): {source}")
        written.append(target)
    report = output_dir / REPORT_JSON
    fileio.write_json(report, summary(explanation, labels, notes, written))
    written.append(report)
    return written


def _input_row(explanation: Explanation, labels: tuple[str, ...], number: int) -> Image.Image:
    inputs = explanation.inputs
    explained = labels[int(explanation.classes[number])]
    true = inputs.labels[number]
    input_lines = (inputs.sources[number], f"true: {'unknown' if true is None else labels[true]}",
                   f"explains: {explained}")
    keras = next((m for m in explanation.models if m.name == explanation.keras), None)
    cam = None
    if explanation.gradcam is not None and keras is not None:
        cam = (explanation.gradcam_title, explanation.gradcam[number], keras.probabilities[number])
    models = [(m.name, m.maps[number], m.probabilities[number], agreement_note(m.agreement, number))
              for m in explanation.models]
    return map_row(inputs.pixels[number], f"{inputs.sources[number]}: every map explains "
                   f"'{explained}'", input_lines, labels, models, cam)


def summary(explanation: Explanation, labels: tuple[str, ...], notes: list[str],
            pictures: list[Path]) -> dict[str, Any]:
    """explain.json: per input, every model's answer and how its map agrees with Keras'."""
    rows = []
    for number, source in enumerate(explanation.inputs.sources):
        explained = int(explanation.classes[number])
        true = explanation.inputs.labels[number]
        models = {}
        for model in explanation.models:
            probabilities = model.probabilities[number]
            best = int(probabilities.argmax())
            models[model.name] = {
                "predicted": labels[best], "probability": round(float(probabilities[best]), 6),
                "explained_class_probability": round(float(probabilities[explained]), 6),
                "map_range": [round(float(model.maps[number].min()), 6),
                              round(float(model.maps[number].max()), 6)],
                "agreement_with_keras": _agreement_at(model.agreement, number),
                **_scores_at(explanation.scores.get(model.name), number),
            }
        rows.append({"input": source, "picture": pictures[number].name,
                     "true_label": None if true is None else labels[true],
                     "explained_class": labels[explained], "models": models,
                     "gradcam_vs_keras_occlusion": _agreement_at(explanation.gradcam_agreement,
                                                                 number)})
    return {"method": {"occlusion": explanation.settings.to_dict(),
                       "fill": "the contract's background value",
                       "map": "mean drop of the explained class's probability over the patches "
                              "covering a pixel",
                       "gradcam": explanation.gradcam_title if explanation.gradcam is not None
                       else None,
                       "faithfulness": {
                           "curve": "the explained class's probability as 0..100 % of the "
                                    "pixels are removed (deletion: lower is better) or put back "
                                    "(insertion: higher is better) in the map's order; area "
                                    "under it; 'gradient' is the gradient map above, 'random' a "
                                    "random ranking",
                           "fills": {fill: faithfulness.FILLS.get(fill, fill)
                                     for fill in next(iter(explanation.scores.values())).fills}
                           if explanation.scores else {}},
                       "resolution": compare.RESOLUTION, "top_percent": compare.TOP_PERCENT},
            "notes": notes, "inputs": rows}


def _scores_at(scores: faithfulness.Scores | None, number: int) -> dict[str, Any]:
    """One input's ``deletion``, ``insertion`` (by fill, then map) and ``random`` AUCs."""
    if scores is None:
        return {}
    maps = [name for name in scores.deletion[scores.fills[0]] if name != faithfulness.RANDOM]
    return {
        curve: {fill: {name: round(float(getattr(scores, curve)[fill][name][number]), 4)
                       for name in maps} for fill in scores.fills}
        for curve in ("deletion", "insertion")} | {
        "random": {fill: {curve: round(float(getattr(scores, curve)[fill][faithfulness.RANDOM]
                                             [number]), 4)
                          for curve in ("deletion", "insertion")} for fill in scores.fills}}


def score_lines(explanation: Explanation) -> list[str]:
    """Per model, the mean AUCs over the inputs: deletion (lower is better) / insertion."""
    lines = [f"faithfulness, mean over {len(explanation.inputs.sources)} input(s) (lower "
             "deletion and higher insertion area than random is better):"] if explanation.scores \
        else []
    gradient = explanation.gradcam_title.split(" (")[0] or "gradient map"
    for name, scores in explanation.scores.items():
        for fill in scores.fills:
            cells = [f"{gradient if method == 'gradient' else method} "
                     f"{scores.deletion[fill][method].mean():.3f}/"
                     f"{scores.insertion[fill][method].mean():.3f}"
                     for method in scores.deletion[fill]]
            lines.append(f"  {name}, {fill} fill: deletion/insertion AUC " + ", ".join(cells))
    return lines


def _agreement_at(agreement: compare.Agreement | None, number: int) -> dict[str, float] | None:
    if agreement is None:
        return None
    return {"rank_correlation": round(float(agreement.rank_correlation[number]), 4),
            "top_overlap": round(float(agreement.top_overlap[number]), 4)}


def picture_name(text: str, taken: set[str]) -> str:
    """A file-name-safe, unique stem for an input's PNG."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "input"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}-{number}", number + 1
    taken.add(name)
    return name
