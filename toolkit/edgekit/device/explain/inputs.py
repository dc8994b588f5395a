"""The inputs ``edgekit explain`` is asked about: image files, test images, wrong answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import datasets, images, runtime, verify
from edgekit.device.explain import session


def parse_class(text: str | None, labels: tuple[str, ...]) -> int | None:
    """``--class``: a label (any case) or an index; ValueError naming the choices otherwise."""
    if text is None:
        return None
    by_name = {label.lower(): number for number, label in enumerate(labels)}
    if text.strip().lower() in by_name:
        return by_name[text.strip().lower()]
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number < len(labels):
        raise ValueError(f"{text!r} is not a class of this model: give a label "
                         f"({', '.join(labels)}) or an index 0..{len(labels) - 1}")
    return number


class TestImages:
    """The release's test split, read once and only when an index or --wrong needs it."""

    def __init__(self, manifest: dict[str, Any], contract: InputContract,
                 spec: datasets.DataSpec | None) -> None:
        self.manifest, self.contract, self.spec = manifest, contract, spec
        self._split: datasets.Split | None = None

    @property
    def split(self) -> datasets.Split:
        if self._split is None:
            self._split = verify.release_test_split(self.manifest, self.contract, self.spec)
        return self._split


def gather(contract: InputContract, test: TestImages, image_paths: tuple[Path, ...],
           indices: tuple[int, ...], wrong: int, wrong_model: Callable[[], runtime.LoadedModel],
           echo: Callable[[str], None] = print) -> session.Inputs:
    """Image files (prepared as the contract says), test images by index, then the first
    ``wrong`` test images ``wrong_model`` (the int8 artifact) misclassifies."""
    pixels: list[np.ndarray] = []
    sources: list[str] = []
    labels: list[int | None] = []
    for path in image_paths:
        prepared = images.prepare(path, contract)
        pixels.append(prepared.pixels)
        sources.append(str(path))
        labels.append(None)
    chosen = list(indices)
    if wrong:
        model = wrong_model()
        predicted = model.predict(test.split.images).argmax(axis=1)
        mistakes = np.flatnonzero(predicted != test.split.labels)[:wrong]
        echo(f"{model.path.name} gets {int((predicted != test.split.labels).sum())} of "
             f"{len(test.split):,} test images wrong; explaining {len(mistakes)} of them")
        chosen += [int(index) for index in mistakes if int(index) not in chosen]
    if chosen:
        count = len(test.split)
        outside = [index for index in chosen if index >= count]
        if outside:
            raise errors.DataError(f"test index {outside[0]} is out of range: the test split "
                                   f"has {count:,} images (0..{count - 1}).")
        for index in chosen:
            pixels.append(test.split.images[index])
            sources.append(f"test image {index}")
            labels.append(int(test.split.labels[index]))
    if not pixels:
        raise errors.DataError("nothing to explain: give --image FILE, --index N or --wrong N.")
    taken: set[str] = set()
    names = [session.picture_name(Path(source).stem if index < len(image_paths)
                                  else source.replace("test image ", "test-"), taken)
             for index, source in enumerate(sources)]
    return session.Inputs(np.stack(pixels), sources, names, labels)
