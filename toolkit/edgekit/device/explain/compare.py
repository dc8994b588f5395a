"""How alike two sets of maps are: rank correlation and overlap of the most important pixels.

Both measures are per image and use only the pixels of a ``mask`` (see
:func:`edgekit.device.explain.occlusion.support`): pixels where occlusion cannot change the
input are 0 in every map and would make any two maps look alike. Values smaller than
:data:`RESOLUTION` count as 0: a confident prediction's map is flat up to round-off (1e-6 in
fp32), and ranking that noise would call identical maps different; an int8 output, in steps
of 1/256, cannot show changes that small either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

TOP_PERCENT = 10.0  # "the most important pixels": the top tenth of the compared pixels
RESOLUTION = 0.005  # map values (probability drops) below half a percentage point count as 0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a 1-D array, ties sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first_of_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(first_of_group) - 1
    group_starts = np.flatnonzero(first_of_group)
    group_ends = np.append(group_starts[1:], len(values))
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((group_starts + group_ends - 1) / 2)[group]
    return ranks


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rho of two 1-D arrays; 1 when both are constant, 0 when only one is."""
    first_ranks, second_ranks = average_ranks(first), average_ranks(second)
    first_ranks -= first_ranks.mean()
    second_ranks -= second_ranks.mean()
    scale = np.sqrt((first_ranks ** 2).sum() * (second_ranks ** 2).sum())
    if scale == 0:
        return 1.0 if not first_ranks.any() and not second_ranks.any() else 0.0
    return float((first_ranks * second_ranks).sum() / scale)


def top_pixels(values: np.ndarray, percent: float) -> set[int]:
    """Positions of the ``percent`` % largest values (ties by position), leaving out values
    under :data:`RESOLUTION`: a flat map has no most important pixels."""
    count = max(1, int(np.ceil(len(values) * percent / 100)))
    order = np.argsort(-values, kind="stable")[:count]
    return set(order[values[order] >= RESOLUTION].tolist())


def top_overlap(first: np.ndarray, second: np.ndarray, percent: float = TOP_PERCENT) -> float:
    """Intersection over union of the two arrays' top ``percent`` % positions (1 if both
    maps are flat)."""
    a, b = top_pixels(first, percent), top_pixels(second, percent)
    return len(a & b) / len(a | b) if a or b else 1.0


def _resolved(values: np.ndarray) -> np.ndarray:
    return np.where(np.abs(values) < RESOLUTION, 0.0, values)


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Per-image agreement of maps with reference maps."""

    rank_correlation: np.ndarray  # float64 [N]
    top_overlap: np.ndarray  # float64 [N]
    indices: np.ndarray  # the images' test-set indices (or 0..N-1)

    @property
    def mean_rank_correlation(self) -> float:
        return float(self.rank_correlation.mean())

    @property
    def mean_top_overlap(self) -> float:
        return float(self.top_overlap.mean())

    def worst(self, count: int = 5) -> list[dict[str, Any]]:
        """The images whose maps agree least (lowest rank correlation first)."""
        order = np.argsort(self.rank_correlation, kind="stable")[:count]
        return [{"index": int(self.indices[i]),
                 "rank_correlation": round(float(self.rank_correlation[i]), 4),
                 "top_overlap": round(float(self.top_overlap[i]), 4)} for i in order]

    def summary(self, worst: int = 5) -> dict[str, Any]:
        return {"images": int(len(self.indices)),
                "mean_rank_correlation": self.mean_rank_correlation,
                "min_rank_correlation": float(self.rank_correlation.min()),
                "mean_top_overlap": self.mean_top_overlap,
                "top_percent": TOP_PERCENT,
                "resolution": RESOLUTION,
                "worst": self.worst(worst)}


def agreement(maps: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
              indices: np.ndarray | None = None, percent: float = TOP_PERCENT) -> Agreement:
    """Compare ``maps`` [N, H, W] with ``reference`` [N, H, W] image by image on ``mask``."""
    if maps.shape != reference.shape:
        raise ValueError(f"maps of shape {maps.shape} cannot be compared with {reference.shape}")
    count = len(maps)
    mask = np.ones(maps.shape, dtype=bool) if mask is None else mask
    correlations = np.empty(count)
    overlaps = np.empty(count)
    for number in range(count):
        chosen = mask[number] if mask[number].any() else np.ones(mask[number].shape, dtype=bool)
        first = _resolved(maps[number][chosen])
        second = _resolved(reference[number][chosen])
        correlations[number] = rank_correlation(first, second)
        overlaps[number] = top_overlap(first, second, percent)
    return Agreement(correlations, overlaps,
                     np.arange(count) if indices is None else np.asarray(indices))


def shuffled_agreement(maps: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                       seed: int = 0) -> Agreement:
    """The chance level: each map against another image's reference map (a derangement),
    on the pixels both images' masks keep."""
    count = len(maps)
    if count < 2:
        raise ValueError("the chance level needs at least two images")
    shift = int(np.random.default_rng(seed).integers(1, count))
    partner = (np.arange(count) + shift) % count
    return agreement(maps, reference[partner], mask & mask[partner])
