"""Datasets: Fashion-MNIST's four IDX files, or a folder of images (:mod:`edgekit.device.folders`).

``--data`` names one: ``fashion-mnist`` (the default, looked up as below), a folder holding the
four IDX files, or a folder of class folders. :func:`open_dataset` returns uint8 images at the
model's size with the input contract they were prepared for, and a record of where each image
came from. Device-safe: numpy, Pillow and the standard library, so ``edgekit verify`` can read
a test split without TensorFlow; Keras' download is passed in by the workstation.

Lookup order (the first location holding the four files wins):
1. ``--data DIR`` / ``EDGEKIT_DATA_DIR`` (an explicit folder must hold them: no fallback);
2. Keras' cache, ``~/.keras/datasets/fashion-mnist/``;
3. ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``);
4. ``keras.datasets.fashion_mnist`` download (needs TensorFlow and internet).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import errors
from edgekit.contract import FASHION_MNIST, InputContract
from edgekit.device import folders

IMAGE_SIZE = FASHION_MNIST.height
NUM_CLASSES = FASHION_MNIST.num_classes
FASHION_MNIST_NAME = "fashion-mnist"
MIN_IMAGE_SIZE = 8

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "EDGEKIT_DATA_DIR"
OFFLINE_ENV_VAR = "EDGEKIT_OFFLINE"

FIX_HINT = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian), run "
    "`scripts/setup.sh`, or pass --data / set EDGEKIT_DATA_DIR to a folder holding "
    + ", ".join(FILES.values())
    + "."
)


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # class indices [N]
    files: tuple[str, ...] | None = None  # a folder dataset's relative paths, in order

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> Split:
        if limit is None or limit >= len(self):
            return self
        return Split(self.images[:limit], self.labels[:limit],
                     None if self.files is None else self.files[:limit])


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: Path
    contract: InputContract = FASHION_MNIST
    validation: Split | None = None  # None: training carves it from train (Fashion-MNIST)
    record: dict[str, object] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


def candidate_dirs() -> list[tuple[str, Path]]:
    """The automatic locations, in lookup order, with a name for messages."""
    return [("Keras cache", keras_cache_dir()), ("Debian package", SYSTEM_DIR)]


def has_all_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES.values())


def locate(data_dir: str | os.PathLike[str] | None = None,
           download: Callable[[], Path | None] | None = None) -> Path:
    """Return the folder holding the four files, downloading with Keras as a last resort."""
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        source = "--data" if data_dir is not None else ENV_VAR
        if not folder.is_dir():
            raise errors.DataError(f"dataset folder {folder} (from {source}) does not exist. {FIX_HINT}")
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise errors.DataError(
                f"dataset folder {folder} (from {source}) lacks {', '.join(missing)}. {FIX_HINT}"
            )
        return folder
    looked = []
    for name, folder in candidate_dirs():
        if has_all_files(folder):
            return folder
        looked.append(f"{folder} ({name})")
    if download is not None and not os.environ.get(OFFLINE_ENV_VAR):
        downloaded = download()
        if downloaded is not None:
            return downloaded
        looked.append("keras.datasets.fashion_mnist download (failed or TensorFlow not installed)")
    raise errors.DataError(f"Fashion-MNIST not found; looked in: {'; '.join(looked)}. {FIX_HINT}")


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise errors.DataError(
            f"{path} is not a readable gzip file ({error}); it is truncated or corrupt. "
            f"Reinstall it: {FIX_HINT}"
        ) from error


def read_idx_images(path: Path, expected_count: int) -> np.ndarray:
    raw = _read_gzip(path)
    if len(raw) < 16:
        raise errors.DataError(f"{path} is too short to be an IDX image file. {FIX_HINT}")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise errors.DataError(
            f"{path} has magic number {magic}, not {IMAGES_MAGIC} (IDX images). {FIX_HINT}"
        )
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE) or count != expected_count:
        raise errors.DataError(
            f"{path} holds {count} images of {rows}x{cols}; expected {expected_count} of "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}. {FIX_HINT}"
        )
    body = raw[16:]
    if len(body) != count * rows * cols:
        raise errors.DataError(
            f"{path} holds {len(body)} pixel bytes, expected {count * rows * cols}: "
            f"the file is truncated. {FIX_HINT}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(count, rows, cols, 1)


def read_idx_labels(path: Path, expected_count: int) -> np.ndarray:
    raw = _read_gzip(path)
    if len(raw) < 8:
        raise errors.DataError(f"{path} is too short to be an IDX label file. {FIX_HINT}")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise errors.DataError(
            f"{path} has magic number {magic}, not {LABELS_MAGIC} (IDX labels). {FIX_HINT}"
        )
    body = raw[8:]
    if count != expected_count or len(body) != count:
        raise errors.DataError(
            f"{path} declares {count} labels and holds {len(body)}; expected {expected_count}. "
            f"{FIX_HINT}"
        )
    labels = np.frombuffer(body, dtype=np.uint8)
    if labels.max(initial=0) >= NUM_CLASSES:
        raise errors.DataError(f"{path} holds labels outside 0..{NUM_CLASSES - 1}. {FIX_HINT}")
    return labels


def load(data_dir: str | os.PathLike[str] | None = None,
         download: Callable[[], Path | None] | None = None) -> Dataset:
    """Fashion-MNIST. ``download``: the last resort when no folder holds the files (the
    workstation passes Keras' download; the device side never imports Keras)."""
    folder = locate(data_dir, download=download)
    return Dataset(
        train=load_split(folder, "train"),
        test=load_split(folder, "test"),
        source=folder,
        record={"kind": FASHION_MNIST_NAME, "source": str(folder)},
    )


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What ``--data`` and its companions say: which dataset, and how to prepare a folder's."""

    data: str = FASHION_MNIST_NAME
    image_size: tuple[int, int] | None = None  # a folder's images: default their common size
    color_mode: str | None = None  # grayscale | rgb; default RGB unless every image is grey
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", str(self.data))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(d) for d in self.image_size))
            if min(self.image_size) < MIN_IMAGE_SIZE:
                raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE} pixels")
        if self.color_mode not in (None, "grayscale", "rgb"):
            raise ValueError("colour mode must be grayscale or rgb")

    @property
    def is_fashion_mnist(self) -> bool:
        return is_fashion_mnist(self.data)

    def open(self, **options: Any) -> Dataset:
        """:func:`open_dataset` with this spec's choices (``options`` as it takes them)."""
        return open_dataset(self.data, size=self.image_size, color=self.color_mode,
                            skip_bad=self.skip_bad_images, **options)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "image_size": None if self.image_size is None
                else list(self.image_size), "color_mode": self.color_mode,
                "skip_bad_images": self.skip_bad_images}


def parse_image_size(text: str) -> tuple[int, int]:
    """``32`` or ``48x64`` (height x width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"image size {text!r} is not H or HxW (e.g. 32 or 48x64)") from None
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2:
        raise ValueError(f"image size {text!r} is not H or HxW (e.g. 32 or 48x64)")
    return (numbers[0], numbers[1])


def is_fashion_mnist(data: str | os.PathLike[str] | None) -> bool:
    """``--data`` names Fashion-MNIST: the name, nothing, or a folder with the IDX files."""
    if data is None or str(data) == FASHION_MNIST_NAME:
        return True
    folder = Path(data)
    # Any of the four IDX names (a truncated download): the IDX checks say what is missing.
    return folder.is_dir() and any((folder / name).exists() for name in FILES.values())


def open_dataset(data: str | os.PathLike[str] | None = None, *,
                 download: Callable[[], Path | None] | None = None, seed: int = 42,
                 size: tuple[int, int] | None = None, color: str | None = None,
                 skip_bad: bool = False, contract: InputContract | None = None,
                 record: dict[str, Any] | None = None, splits: tuple[str, ...] = ("train",
                 "validation", "test")) -> Dataset:
    """Any ``--data``: Fashion-MNIST, or a folder of images prepared for ``contract``.

    For a folder, ``contract`` (a model's own) wins over ``size``/``color``, which win over
    what the folder holds; ``record`` (from a run folder or a manifest) replays a recorded
    split instead of making one; ``splits`` limits which splits are decoded (verify: test).
    """
    if is_fashion_mnist(data):
        folder_or_none = None if data is None or str(data) == FASHION_MNIST_NAME else data
        dataset = load(folder_or_none, download=download)
        if contract is not None and contract.shape != FASHION_MNIST.shape:
            raise errors.DataError(
                f"the model takes {contract.describe_shape()} images; Fashion-MNIST's are "
                f"{FASHION_MNIST.describe_shape()}. Pass the model's own dataset with --data DIR.")
        return dataset
    root = Path(data)  # type: ignore[arg-type]
    record = record or folders.plan(root, seed=seed, skip_bad=skip_bad)
    labels = tuple(record["labels"])
    if contract is None:
        contract = folders.infer_contract(root, record, size, color)
    elif contract.num_classes != len(labels):
        raise errors.DataError(
            f"the model has {contract.num_classes} outputs but {root} has {len(labels)} class "
            f"folders ({', '.join(labels)}); use the dataset the model was trained on.")
    else:
        contract = contract.with_labels(labels) if contract.labels != labels else contract
    skipped = list(record.get("skipped_not_images", []))
    prepared: dict[str, Split] = {}
    for name in splits:
        pixels, targets, used = folders.prepare_split(root, record["files"][name], contract,
                                                      skip_bad, skipped)
        if name == "train":  # class-sorted on disk: a seeded order, so --limit is a fair slice
            order = np.random.default_rng(seed).permutation(len(targets))
            pixels, targets, used = pixels[order], targets[order], [used[i] for i in order]
        prepared[name] = Split(pixels, targets, tuple(used))
    warnings = []
    if skipped:
        warnings.append(f"skipped {len(skipped)} file(s) that are not readable images "
                        f"(first: {skipped[0]})")
    if "train" in prepared and "test" in prepared:
        twins = folders.duplicates_across(root, list(prepared["train"].files or ()),
                                          list(prepared["test"].files or ()))
        if twins:
            warnings.append(f"{twins} test image(s) are byte-identical to training images: "
                            "test accuracy will read high")
    empty = Split(np.zeros((0, *contract.shape), np.uint8), np.zeros(0, np.int64), ())
    return Dataset(train=prepared.get("train", empty), test=prepared.get("test", empty),
                   source=root, contract=contract, validation=prepared.get("validation"),
                   record={**record, "skipped": skipped}, warnings=tuple(warnings))


def load_split(folder: Path, split: str) -> Split:
    prefix = "train" if split == "train" else "test"
    count = EXPECTED_COUNTS[split]
    return Split(
        images=read_idx_images(folder / FILES[f"{prefix}_images"], count),
        labels=read_idx_labels(folder / FILES[f"{prefix}_labels"], count),
    )


def load_test(data_dir: str | os.PathLike[str] | None = None) -> Split:
    """Only the 10,000 test images (what verify needs)."""
    return load_split(locate(data_dir), "test")


def summary(dataset: Dataset) -> dict[str, object]:
    """Counts and class balance per split, for ``edgekit data``."""
    labels = dataset.contract.labels
    result: dict[str, object] = {"source": str(dataset.source),
                                 "contract": dataset.contract.to_dict(), "labels": list(labels),
                                 "warnings": list(dataset.warnings)}
    named = [("train", dataset.train), ("validation", dataset.validation), ("test", dataset.test)]
    for name, split in named:
        if split is None:
            continue
        counts = np.bincount(split.labels, minlength=len(labels))
        result[name] = {
            "images": len(split),
            "shape": list(split.images.shape[1:]),
            "pixel_mean": round(float(split.images.mean()), 3),
            "per_class": {label: int(count) for label, count in zip(labels, counts, strict=True)},
        }
    return result
