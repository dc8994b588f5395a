"""Occlusion sensitivity (Zeiler & Fergus, 2014) through any model's forward pass.

A patch slides over the image; each position is filled with the contract's background value
("nothing here") and the drop in the explained class's probability is recorded. A pixel's
value is the mean drop over the patch positions that cover it, so maps lie in [-1, 1]:
positive where hiding the pixel lowers the class probability. The occluded copies of many
images go through ``predict`` together, so one image costs a few batched calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from edgekit.contract import InputContract

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, C] -> probabilities [N, classes]
PATCHES_PER_SIDE = 7  # the default patch is about a seventh of the shorter side
CHUNK_BYTES = 64 * 1024 * 1024  # occluded copies held at once (the batches predict sees)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Patch size and stride in pixels (square patches)."""

    patch: int
    stride: int

    def __post_init__(self) -> None:
        if self.patch < 1 or self.stride < 1:
            raise ValueError("patch and stride must be at least 1 pixel")
        if self.stride > self.patch:
            raise ValueError(f"stride {self.stride} is larger than the patch {self.patch}: some "
                             "pixels would never be occluded")

    def check_fits(self, contract: InputContract) -> None:
        if self.patch > min(contract.height, contract.width):
            raise ValueError(f"patch {self.patch} is larger than the {contract.width}x"
                             f"{contract.height} input; choose at most "
                             f"{min(contract.height, contract.width)}")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def default_settings(contract: InputContract) -> Settings:
    """A patch of about a seventh of the shorter side, moved by half a patch (28x28: 4 and 2)."""
    patch = max(1, round(min(contract.height, contract.width) / PATCHES_PER_SIDE))
    return Settings(patch, max(1, round(patch / 2)))


def settings_for(contract: InputContract, patch: int | None, stride: int | None) -> Settings:
    """The given patch and stride, each defaulting to what suits the input size."""
    default = default_settings(contract)
    patch = default.patch if patch is None else patch
    stride = max(1, round(patch / 2)) if stride is None else stride
    settings = Settings(patch, stride)
    settings.check_fits(contract)
    return settings


def starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one side; the last one touches the far edge."""
    positions = list(range(0, length - patch + 1, stride))
    if positions[-1] + patch < length:
        positions.append(length - patch)
    return positions


def windows(height: int, width: int, settings: Settings) -> list[tuple[int, int]]:
    """Every (top, left) corner of the patch."""
    return [(top, left) for top in starts(height, settings.patch, settings.stride)
            for left in starts(width, settings.patch, settings.stride)]


def coverage(height: int, width: int, settings: Settings) -> np.ndarray:
    """How many patch positions cover each pixel (at least 1, as the stride <= the patch)."""
    counts = np.zeros((height, width), dtype=np.float32)
    for top, left in windows(height, width, settings):
        counts[top:top + settings.patch, left:left + settings.patch] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class Maps:
    maps: np.ndarray  # float32 [N, H, W], the mean probability drop, in [-1, 1]
    probabilities: np.ndarray  # float32 [N, classes] of the unoccluded images
    classes: np.ndarray  # int64 [N], the class each map explains


def occlusion_maps(predict: Predict, images: np.ndarray, background: int, settings: Settings,
                   classes: np.ndarray | None = None) -> Maps:
    """Occlusion maps of ``images`` (uint8 [N, H, W, C]) for ``classes`` (default: predicted).

    Each image's unoccluded copy goes through ``predict`` with its occluded copies, so the
    drop is measured within one call of the same runtime.
    """
    images = np.asarray(images, dtype=np.uint8)
    count, height, width, _ = images.shape
    if classes is not None and len(classes) != count:
        raise ValueError(f"{len(classes)} classes for {count} images")
    corners = windows(height, width, settings)
    per_image = len(corners) + 1
    maps = np.zeros((count, height, width), dtype=np.float32)
    bases, picks = [], []
    for first, last in _chunks(count, per_image * images[0].nbytes):
        batch = np.concatenate([_occluded(image, corners, settings.patch, background)
                                for image in images[first:last]])
        probabilities = np.asarray(predict(batch), dtype=np.float32)
        probabilities = probabilities.reshape(last - first, per_image, -1)
        if classes is not None and not 0 <= int(np.min(classes)) <= int(np.max(classes)) \
                < probabilities.shape[2]:
            raise ValueError(f"classes must lie in 0..{probabilities.shape[2] - 1}")
        picked = (probabilities[:, 0].argmax(axis=1) if classes is None
                  else np.asarray(classes[first:last], dtype=np.int64))
        scores = np.take_along_axis(probabilities, picked[:, None, None], axis=2)[:, :, 0]
        drops = scores[:, :1] - scores[:, 1:]
        for number, (top, left) in enumerate(corners):
            maps[first:last, top:top + settings.patch, left:left + settings.patch] += \
                drops[:, number, None, None]
        bases.append(probabilities[:, 0])
        picks.append(picked)
    maps /= coverage(height, width, settings)
    return Maps(maps, np.concatenate(bases), np.concatenate(picks))


def _chunks(count: int, bytes_per_image: int) -> Iterator[tuple[int, int]]:
    size = max(1, CHUNK_BYTES // max(1, bytes_per_image))
    for first in range(0, count, size):
        yield first, min(count, first + size)


def _occluded(image: np.ndarray, corners: list[tuple[int, int]], patch: int,
              background: int) -> np.ndarray:
    """The image itself, then one copy per corner with that patch set to the background."""
    copies = np.repeat(image[None], len(corners) + 1, axis=0)
    for number, (top, left) in enumerate(corners, start=1):
        copies[number, top:top + patch, left:left + patch] = background
    return copies


def support(images: np.ndarray, background: int, settings: Settings) -> np.ndarray:
    """bool [N, H, W]: pixels covered by at least one patch that changed the image.

    Elsewhere every model's map is exactly 0 (the occluded copy is the image itself), which
    says nothing about the model; the comparisons in :mod:`edgekit.device.explain.compare`
    rank only these pixels.
    """
    images = np.asarray(images)
    count, height, width = images.shape[:3]
    changed = (images != background).any(axis=3)
    result = np.zeros((count, height, width), dtype=bool)
    patch = settings.patch
    for top, left in windows(height, width, settings):
        touched = changed[:, top:top + patch, left:left + patch].any(axis=(1, 2))
        result[touched, top:top + patch, left:left + patch] = True
    return result
