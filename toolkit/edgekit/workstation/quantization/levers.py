"""The repair levers ``--keep-float auto`` combines, and the order it tries them in.

A lever set: Keras layers kept float, (L1, L2) pairs equalised (``equalize``), ONNX Runtime's
calibration method, the number of training images calibrated on. The order puts the repairs
aimed at the layers the diagnosis blames first, so that for a model with a culprit layer the
manifest names it (equalised or kept float):

1. nothing (the plain export);
2. cross-layer equalisation, all in int8: the pairs touching the diagnosis's worst layers, then
   every qualifying pair;
3. each of the worst layers kept float;
4. the calibration variants (4x the images, capped by the training split; the entropy and
   percentile methods), alone, then with the best single float layer of step 3;
5. pairs of float layers (each worst layer with the layer reading its output first).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from edgekit.workstation.config import CALIBRATION_METHODS, ExportConfig
from edgekit.workstation.quantization.measures import nearest_measured

CANDIDATES = 4  # layers from the top of the diagnosis: 4 singles, then 6 pairs
CALIBRATION_FACTOR = 4  # the larger calibration set: this many times the default
Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Levers:
    keep_float: tuple[str, ...] = ()
    equalize: tuple[Pair, ...] = ()
    calibration_method: str = "minmax"
    calibration_size: int = 500

    def config(self, base: ExportConfig) -> ExportConfig:
        return dataclasses.replace(base, keep_float=self.keep_float, equalize=self.equalize,
                                   calibration_method=self.calibration_method,
                                   calibration_size=self.calibration_size)

    def effective(self, file: str, precision: str) -> tuple[Any, ...]:
        """What changes the file: the dynamic-range file is not calibrated, and only the ONNX
        file has a calibration method to choose."""
        key: tuple[Any, ...] = (self.keep_float, self.equalize)
        if precision == "int8":
            key += (self.calibration_size,)
            if file.endswith(".onnx"):
                key += (self.calibration_method,)
        return key

    def used(self, plain: Levers) -> list[str]:
        names = []
        if self.equalize:
            names.append("equalization")
        if self.keep_float:
            names.append("keep_float")
        if self.calibration_method != plain.calibration_method:
            names.append("calibration_method")
        if self.calibration_size != plain.calibration_size:
            names.append("calibration_size")
        return names

    def to_dict(self, plain: Levers) -> dict[str, Any]:
        return {"levers": self.used(plain), "keep_float": list(self.keep_float),
                "equalized": [list(pair) for pair in self.equalize],
                "calibration_method": self.calibration_method,
                "calibration_size": self.calibration_size}


def worst_layers(diagnoses: list[Any]) -> tuple[list[str], dict[str, int], dict[str, list[str]]]:
    """The diagnosis's worst layers (best rank over the failing artifacts), every measured
    layer's best rank, and the layers fused into each measured layer's tensor."""
    best: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    for result in diagnoses:
        for rank, error in enumerate(result.ranked):
            best[error.layer] = min(rank, best.get(error.layer, rank))
            groups[error.layer] = list(dict.fromkeys(groups.get(error.layer, []) + error.group))
    return sorted(best, key=best.__getitem__)[:CANDIDATES], best, groups


def keep_float_sets(diagnoses: list[Any], arithmetic: set[str], parents: dict[str, list[str]]
                    ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(single layers, pairs) from the diagnosis's worst layers. A layer kept float still has
    its output quantised where a quantised layer reads it, so each worst layer paired with the
    layer reading it comes before the other pairs. A measured layer is kept with the layers
    fused into its tensor (conv + norm + act.); sets keeping every arithmetic layer are left
    out."""
    top, best, groups = worst_layers(diagnoses)
    singles: list[tuple[str, ...]] = [(name,) for name in top]
    measured = set(best)
    pairs: list[tuple[str, ...]] = [(name, child) for name in top for child in best
                                     if name in nearest_measured(child, parents, measured)]
    tried = {frozenset(keep) for keep in pairs}
    pairs += [pair for pair in itertools.combinations(top, 2) if frozenset(pair) not in tried]
    chosen: list[tuple[str, ...]] = []

    def expand(units: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        found = []
        for unit in units:
            expanded = tuple(dict.fromkeys(member for name in unit
                                           for member in (groups.get(name) or [name])))
            if (not arithmetic or not arithmetic <= set(expanded)) and expanded not in chosen:
                chosen.append(expanded)
                found.append(expanded)
        return found

    return expand(singles), expand(pairs)


def equalization_sets(diagnoses: list[Any], qualifying: list[Pair]) -> list[tuple[Pair, ...]]:
    """The qualifying pairs touching the diagnosis's worst layers (or the layers fused with
    them), then every qualifying pair."""
    top, _, groups = worst_layers(diagnoses)
    blamed = {member for name in top for member in (groups.get(name) or [name])}
    targeted = tuple(pair for pair in qualifying if blamed & set(pair))
    sets = [targeted] if targeted else []
    if qualifying and tuple(qualifying) != targeted:
        sets.append(tuple(qualifying))
    return sets


def calibration_variants(plain: Levers, training_images: int) -> list[Levers]:
    """More calibration images (capped by the training split), then the other methods."""
    sizes = [plain.calibration_size]
    larger = min(CALIBRATION_FACTOR * plain.calibration_size, training_images)
    if larger > plain.calibration_size:
        sizes.append(larger)
    found = [dataclasses.replace(plain, calibration_size=size, calibration_method=method)
             for method in [plain.calibration_method] + [m for m in CALIBRATION_METHODS
                                                         if m != plain.calibration_method]
             for size in sizes]
    return [levers for levers in found if levers != plain]
