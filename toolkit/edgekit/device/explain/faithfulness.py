"""How faithful a map is to the model: deletion and insertion curves (Petsiuk et al. 2018).

Deletion removes pixels in the order the map ranks them, most important first, and tracks the
explained class's probability; insertion starts from an image with every pixel removed and puts
them back in the same order. A faithful map makes the deletion curve fall fast (small area
under it) and the insertion curve rise fast (large area). The same curves for a random ranking
are the baseline: a map earns its keep only by beating it.

"Removed" means replaced by a fill, and the fill is part of the answer (Sturmfels et al.,
Distill 2020): ``background`` (the contract's background value: it cannot test evidence from
background, which it leaves unchanged) and ``mean`` (the dataset's mean image: removing
background adds a grey garment-shaped haze, so a map that ranks background high is tested).
Both are always measured and reported. Forward passes only, so the curves run on every artifact
through :mod:`edgekit.device.runtime`; ties in a map are broken by a seeded random order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgekit.device.explain import occlusion

STEPS = 20  # the curve's points: 0, 5 %, ..., 100 % of the pixels removed
CHUNK_IMAGES = 8192  # modified copies sent to predict at once
FILLS = {"background": "every removed pixel set to the contract's background value",
         "mean": "every removed pixel set to the dataset's mean image (the test split's)"}
RANDOM = "random"
SEED = 0


def ranking(maps: np.ndarray, seed: int = SEED) -> np.ndarray:
    """int64 [N, H*W]: each image's pixel positions, most important first, ties in a seeded
    random order."""
    count = len(maps)
    flat = np.asarray(maps, dtype=np.float64).reshape(count, -1)
    tie_break = np.random.default_rng(seed).random(flat.shape)
    return np.lexsort((tie_break, -flat), axis=1).astype(np.int64)


def random_maps(shape: tuple[int, ...], cell: int, seed: int = SEED + 1) -> np.ndarray:
    """The baseline: a random order of ``cell`` x ``cell`` blocks of each image (the occlusion
    patch; at 28x28 a 7x7 grid, the last feature map's). Blocks, not single pixels: deleting
    scattered pixels makes salt-and-pepper images the model reacts to whatever it looks at
    (measured in docs/explain.md), so only the order, not the texture, may differ from a map's."""
    count, height, width = shape
    rows, columns = -(-height // cell), -(-width // cell)
    grid = np.random.default_rng(seed).random((count, rows, columns)).astype(np.float32)
    return np.repeat(np.repeat(grid, cell, axis=1), cell, axis=2)[:, :height, :width]


@dataclasses.dataclass(frozen=True)
class Curves:
    """The explained class's probability at each step, [N, STEPS + 1] per curve."""

    deletion: np.ndarray
    insertion: np.ndarray

    @staticmethod
    def area(curve: np.ndarray) -> np.ndarray:
        """Area under each curve over the removed fraction 0..1 (trapezoids)."""
        return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(axis=1)

    @property
    def deletion_auc(self) -> np.ndarray:
        return self.area(self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        return self.area(self.insertion)


def curves(predict: occlusion.Predict, images: np.ndarray, classes: np.ndarray,
           maps: np.ndarray, fill: np.ndarray, steps: int = STEPS) -> Curves:
    """Deletion and insertion curves of ``maps`` for ``images`` (uint8 [N, H, W, C]);
    ``fill``: uint8 [H, W, C] (or [N, H, W, C]) that replaces a removed pixel."""
    images = np.asarray(images, dtype=np.uint8)
    count, height, width, channels = images.shape
    fills = np.broadcast_to(np.asarray(fill, dtype=np.uint8), images.shape)
    order = ranking(maps)
    pixels = height * width
    counts = np.round(np.linspace(0, pixels, steps + 1)).astype(np.int64)
    per_image = 2 * (steps + 1)
    probabilities = np.zeros((count, per_image), dtype=np.float32)
    size = max(1, CHUNK_IMAGES // per_image)
    for first in range(0, count, size):
        last = min(count, first + size)
        batch = np.concatenate([_modified(images[n], fills[n], order[n], counts)
                                for n in range(first, last)])
        answers = np.asarray(predict(batch), dtype=np.float32).reshape(last - first, per_image, -1)
        picked = np.asarray(classes[first:last], dtype=np.int64)
        probabilities[first:last] = np.take_along_axis(answers, picked[:, None, None], axis=2)[..., 0]
    return Curves(probabilities[:, :steps + 1], probabilities[:, steps + 1:])


def _modified(image: np.ndarray, fill: np.ndarray, order: np.ndarray,
              counts: np.ndarray) -> np.ndarray:
    """The deletion copies (first ``k`` ranked pixels filled), then the insertion copies (the
    fill with the first ``k`` ranked pixels put back), one per ``k`` in ``counts``."""
    height, width, channels = image.shape
    flat_image, flat_fill = image.reshape(-1, channels), fill.reshape(-1, channels)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    chosen = rank[None, :] < counts[:, None]  # [steps + 1, H*W]: removed (or inserted) pixels
    deleted = np.where(chosen[..., None], flat_fill[None], flat_image[None])
    inserted = np.where(chosen[..., None], flat_image[None], flat_fill[None])
    return np.concatenate([deleted, inserted]).reshape(-1, height, width, channels)


def fill_images(name: str, background: int, mean_image: np.ndarray | None,
                shape: tuple[int, int, int]) -> np.ndarray:
    """The uint8 [H, W, C] image a fill stands for."""
    if name == "background":
        return np.full(shape, background, dtype=np.uint8)
    if name == "mean" and mean_image is not None:
        return np.clip(np.round(mean_image), 0, 255).astype(np.uint8).reshape(shape)
    raise ValueError(f"fill {name!r} needs {'a mean image' if name == 'mean' else 'a known name'}")


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per fill and method (``random`` included): each image's deletion and insertion AUC."""

    deletion: dict[str, dict[str, np.ndarray]]
    insertion: dict[str, dict[str, np.ndarray]]
    steps: int

    @property
    def fills(self) -> list[str]:
        return list(self.deletion)


def score(predict: occlusion.Predict, images: np.ndarray, classes: np.ndarray,
          maps: dict[str, np.ndarray], fills: dict[str, np.ndarray], cell: int,
          steps: int = STEPS) -> Scores:
    """Deletion and insertion AUCs of every map in ``maps`` and of a random ranking of
    ``cell``-pixel blocks, for every fill in ``fills`` (name -> uint8 [H, W, C])."""
    every = {**maps, RANDOM: random_maps(np.asarray(images).shape[:3], cell)}
    deletion: dict[str, dict[str, np.ndarray]] = {}
    insertion: dict[str, dict[str, np.ndarray]] = {}
    for fill_name, fill in fills.items():
        deletion[fill_name], insertion[fill_name] = {}, {}
        for method, method_maps in every.items():
            made = curves(predict, images, classes, method_maps, fill, steps)
            deletion[fill_name][method] = made.deletion_auc
            insertion[fill_name][method] = made.insertion_auc
    return Scores(deletion, insertion, steps)


def _mean_and_error(values: np.ndarray) -> dict[str, float]:
    error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("inf")
    return {"auc": round(float(values.mean()), 4), "standard_error": round(error, 4)}


def beats_random(scores: Scores, method: str) -> dict[str, Any]:
    """The pass/fail check: for each fill, ``method``'s mean deletion AUC below random's and
    its mean insertion AUC above, each by more than two standard errors of the paired
    per-image difference."""
    result: dict[str, Any] = {}
    for fill in scores.fills:
        entry: dict[str, Any] = {}
        for curve, sign in (("deletion", -1.0), ("insertion", 1.0)):
            table = getattr(scores, curve)[fill]
            difference = table[method] - table[RANDOM]
            error = (float(difference.std(ddof=1) / np.sqrt(len(difference)))
                     if len(difference) > 1 else float("inf"))
            entry[curve] = {"value": round(float(table[method].mean()), 4),
                            "random": round(float(table[RANDOM].mean()), 4),
                            "difference": round(float(difference.mean()), 4),
                            "standard_error": round(error, 4),
                            "passed": bool(sign * float(difference.mean()) > 2 * error)}
        entry["passed"] = entry["deletion"]["passed"] and entry["insertion"]["passed"]
        result[fill] = entry
    result["passed"] = all(result[fill]["passed"] for fill in scores.fills)
    return result


def report(scores: Scores, default_method: str | None, scored_on: str) -> dict[str, Any]:
    """explain.json's ``deletion``, ``insertion``, ``random`` and ``faithfulness`` entries."""
    methods = [name for name in scores.deletion[scores.fills[0]] if name != RANDOM]
    return {
        "deletion": {fill: {m: _mean_and_error(scores.deletion[fill][m]) for m in methods}
                     for fill in scores.fills},
        "insertion": {fill: {m: _mean_and_error(scores.insertion[fill][m]) for m in methods}
                      for fill in scores.fills},
        "random": {fill: {"deletion": _mean_and_error(scores.deletion[fill][RANDOM]),
                          "insertion": _mean_and_error(scores.insertion[fill][RANDOM])}
                   for fill in scores.fills},
        "faithfulness": {
            "scored_on": scored_on, "steps": scores.steps,
            "curve": "the explained class's probability as 0..100 % of the pixels are removed "
                     "(deletion) or put back (insertion), in the map's order; area under it",
            "fills": {fill: FILLS.get(fill, fill) for fill in scores.fills},
            "default_method": default_method,
            "check": None if default_method is None else beats_random(scores, default_method)},
    }


def lines(scores: Scores, default_method: str | None) -> list[str]:
    """One line per fill: every method's deletion/insertion AUC beside random's."""
    result = []
    for fill in scores.fills:
        cells = []
        for method in scores.deletion[fill]:
            cells.append(f"{method} {scores.deletion[fill][method].mean():.3f}/"
                         f"{scores.insertion[fill][method].mean():.3f}")
        result.append(f"deletion/insertion AUC, {fill} fill: " + ", ".join(cells))
    if default_method is not None:
        check = beats_random(scores, default_method)
        for fill in scores.fills:
            entry = check[fill]
            result.append(
                f"sanity check {default_method}_beats_random ({fill} fill): "
                f"{'passed' if entry['passed'] else 'FAILED'} (deletion "
                f"{entry['deletion']['difference']:+.3f} ± {entry['deletion']['standard_error']:.3f}"
                f", insertion {entry['insertion']['difference']:+.3f} ± "
                f"{entry['insertion']['standard_error']:.3f} against random; need beyond 2 SE)")
    return result
