"""The input contract: what every artifact of a release takes and gives, as data.

Written into the manifest (and the models' own metadata) at export and read back by every
device-side command, so no module holds an image size or a label list of its own. Standard
library only. Fashion-MNIST is one contract among others (:data:`FASHION_MNIST`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

COLOR_MODES = ("grayscale", "rgb")
# "stretch": resize to height x width (Keras' image_dataset_from_directory does this);
# "fit": keep the aspect ratio and pad with the background (Fashion-MNIST's own conversion).
RESIZE_MODES = ("stretch", "fit")
RESAMPLE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")
MIN_SIZE = 8
MAX_DEFAULT_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Preparation:
    """How an image file becomes model input; one function (edgekit.device.images) applies it."""

    color: str = "rgb"
    resize: str = "stretch"
    resample: str = "bilinear"
    invert_light_background: bool = False  # Fashion-MNIST: light garments on black
    crop_margins: bool = False  # Fashion-MNIST: trim empty margins before resizing

    def __post_init__(self) -> None:
        for name, value, allowed in (("color", self.color, COLOR_MODES),
                                     ("resize", self.resize, RESIZE_MODES),
                                     ("resample", self.resample, RESAMPLE_FILTERS)):
            if value not in allowed:
                raise ValueError(f"preparation {name} must be one of {', '.join(allowed)}, "
                                 f"not {value!r}")


@dataclasses.dataclass(frozen=True)
class InputContract:
    """Raw uint8 NHWC pixels in 0..255 in; probabilities over ``labels`` out."""

    height: int
    width: int
    channels: int
    labels: tuple[str, ...]
    preparation: Preparation = Preparation()
    background: int = 0  # the value of "nothing here" (occlusion fills with it)
    scaling: str = "inside the graph"  # where 0..255 becomes the model's range
    output: str = "probabilities"  # what the artifacts return (a user's logits get a softmax)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if min(self.height, self.width) < 1:
            raise ValueError(f"input size {self.height}x{self.width} is not a picture")
        if self.channels not in (1, 3):
            raise ValueError(f"images have 1 (grey) or 3 (RGB) channels, not {self.channels}")
        if len(self.labels) < 2:
            raise ValueError("a classifier needs at least two classes")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("class labels must be distinct")
        expected = "grayscale" if self.channels == 1 else "rgb"
        if self.preparation.color != expected:
            raise ValueError(f"{self.channels}-channel input needs colour mode {expected}, "
                             f"not {self.preparation.color}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe_shape(self) -> str:
        return f"[N, {self.height}, {self.width}, {self.channels}]"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``input`` entry (its schema-1 keys kept: layout, shape, dtype, ...)."""
        return {
            "layout": "NHWC",
            "shape": [None, self.height, self.width, self.channels],
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "dtype": "uint8",
            "range": [0, 255],
            "background": self.background,
            "preparation": dataclasses.asdict(self.preparation),
            "scaling": self.scaling,
            "output": self.output,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any], labels: Any) -> InputContract:
        """Read a manifest's ``input`` entry; raises ``ValueError`` (KeyError, TypeError) if bad."""
        preparation = payload.get("preparation")
        if preparation is None:  # schema 1: only Fashion-MNIST releases existed
            return dataclasses.replace(FASHION_MNIST, labels=tuple(labels))
        return cls(height=int(payload["height"]), width=int(payload["width"]),
                   channels=int(payload["channels"]), labels=tuple(labels),
                   preparation=Preparation(**preparation),
                   background=int(payload.get("background", 0)),
                   scaling=str(payload.get("scaling", "inside the graph")),
                   output=str(payload.get("output", "probabilities")),
                   description=str(payload.get("description", "")))

    def with_labels(self, labels: tuple[str, ...]) -> InputContract:
        return dataclasses.replace(self, labels=labels)


def default_preparation(channels: int) -> Preparation:
    """A user's images: stretched to the model's size with bilinear filtering, like Keras."""
    return Preparation(color="grayscale" if channels == 1 else "rgb")


def placeholder_labels(count: int) -> tuple[str, ...]:
    """Labels for a model that carries none: ``class 0`` .. ``class N-1``."""
    return tuple(f"class {index}" for index in range(count))


FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FASHION_MNIST = InputContract(
    height=28, width=28, channels=1, labels=FASHION_MNIST_LABELS,
    preparation=Preparation(color="grayscale", resize="fit", resample="lanczos",
                            invert_light_background=True, crop_margins=True),
    background=0,
    description=(
        "Raw Fashion-MNIST pixels: uint8, 0 = background, light garment on black. "
        "Float artifacts take these values cast to float32 (scaling to [0, 1] is inside the "
        "model); integer artifacts take them quantised with the input tensor's own scale and "
        "zero point. edgekit.runtime applies both."
    ),
)

