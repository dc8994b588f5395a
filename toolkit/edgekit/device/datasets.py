"""Fashion-MNIST: find the four IDX files, validate them, load them as numpy arrays.

Device-safe: only numpy and the standard library, so ``edgekit verify`` can read the test
set without TensorFlow. Keras is imported only for the last-resort download.

Lookup order (the first location holding the four files wins):
1. ``--data-dir`` / ``EDGEKIT_DATA_DIR`` (an explicit folder must hold them: no fallback);
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

import numpy as np

from edgekit import errors
from edgekit.contract import IMAGE_SIZE, NUM_CLASSES

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
    "`scripts/setup.sh`, or pass --data-dir / set EDGEKIT_DATA_DIR to a folder holding "
    + ", ".join(FILES.values())
    + "."
)


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 28, 28, 1]
    labels: np.ndarray  # uint8 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> Split:
        if limit is None or limit >= len(self):
            return self
        return Split(self.images[:limit], self.labels[:limit])


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: Path


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
        source = "--data-dir" if data_dir is not None else ENV_VAR
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
    """``download``: the last resort when no folder holds the files (the workstation passes
    Keras' download; the device side never imports Keras)."""
    folder = locate(data_dir, download=download)
    return Dataset(
        train=load_split(folder, "train"),
        test=load_split(folder, "test"),
        source=folder,
    )


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
    from edgekit.contract import LABELS

    result: dict[str, object] = {"source": str(dataset.source)}
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        result[name] = {
            "images": len(split),
            "shape": list(split.images.shape[1:]),
            "pixel_mean": round(float(split.images.mean()), 3),
            "per_class": {label: int(count) for label, count in zip(LABELS, counts, strict=True)},
        }
    return result
