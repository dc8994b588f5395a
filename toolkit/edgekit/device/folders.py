"""A folder of images as a dataset: one sub-folder per class, optional split folders.

The layout Keras' ``image_dataset_from_directory``, Model Maker and Ultralytics read::

    DIR/cat/1.jpg, DIR/dog/2.png, ...                 (a split is made and recorded)
    DIR/train/cat/..., DIR/val/cat/..., DIR/test/...  (val/ or validation/ and test/ optional)

Labels are the class folder names, sorted, unless ``DIR/labels.txt`` gives the order. A split
that is not on disk is carved from the training images: a pure function of the sorted relative
paths and the seed (stratified), recorded with its file lists, so that ``export`` and ``verify``
later find the very same test images. Nothing is ever written into the user's folder.

Every image is decoded and resized once, by :func:`edgekit.device.images.prepare` — the function
``edgekit predict`` and the server use — into uint8 arrays at the model's size. Device-safe:
listing with pathlib (``verify`` runs this without TensorFlow), decoding with Pillow.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit import contract as contract_module
from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_NAMES = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
LABELS_FILE = "labels.txt"
DEFAULT_FRACTIONS = {"validation": 0.1, "test": 0.1}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def is_image_folder(root: Path) -> bool:
    return root.is_dir() and any(child.is_dir() and not child.name.startswith(".")
                                 for child in root.iterdir())


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders present under ``root`` (``train`` is required for the layout)."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found if "train" in found else {}


def list_classes(folder: Path, skip_bad: bool) -> tuple[dict[str, list[str]], list[str]]:
    """Class name -> sorted image paths relative to ``folder``; and the files that are not images."""
    classes: dict[str, list[str]] = {}
    not_images: list[str] = []
    for class_dir in sorted(path for path in folder.iterdir() if path.is_dir()
                            and not path.name.startswith(".")):
        files = []
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            relative = path.relative_to(folder).as_posix()
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(relative)
            else:
                not_images.append(relative)
        classes[class_dir.name] = files
    if not_images and not skip_bad:
        raise errors.DataError(
            f"{folder / not_images[0]} is not an image (PNG, JPEG, BMP, GIF, WebP)"
            + (f", nor are {len(not_images) - 1} other file(s)" if len(not_images) > 1 else "")
            + ". Remove them, or pass --skip-bad-images to skip and count them.")
    return classes, not_images


def read_labels(root: Path, found: Iterable[str]) -> tuple[str, ...]:
    """Sorted class folder names, or the order ``labels.txt`` gives (it must name them all)."""
    found = sorted(found)
    order_file = root / LABELS_FILE
    if not order_file.is_file():
        return tuple(found)
    order = [line.strip() for line in order_file.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if sorted(order) != found:
        raise errors.DataError(
            f"{order_file} lists {', '.join(order)} but the class folders are "
            f"{', '.join(found)}; make them the same (or delete {LABELS_FILE} to sort them).")
    return tuple(order)


def check_classes(root: Path, splits: dict[str, dict[str, list[str]]]) -> None:
    train = splits["train"]
    if not train:
        raise errors.DataError(
            f"{root} holds no class folders: put one sub-folder of images per class in it "
            "(e.g. DIR/cat/1.jpg, DIR/dog/2.jpg).")
    empty = [name for name, files in train.items() if not files]
    if empty:
        raise errors.DataError(f"class folder {root / empty[0]} holds no images; add images or "
                               "remove the folder.")
    if len(train) < 2:
        raise errors.DataError(
            f"{root} has one class ({next(iter(train))}); a classifier needs at least two "
            "class folders.")
    for split, classes in splits.items():
        if split != "train" and sorted(classes) != sorted(train):
            raise errors.DataError(
                f"the {split} split has classes {', '.join(sorted(classes))} but train has "
                f"{', '.join(sorted(train))}; every split needs the same class folders.")


def carve(files_by_class: dict[str, list[str]], fractions: dict[str, float],
          seed: int) -> dict[str, dict[str, list[str]]]:
    """Stratified split of each class's sorted files: a pure function of the paths and seed."""
    rng = np.random.default_rng(seed)
    result: dict[str, dict[str, list[str]]] = {"train": {}, **{name: {} for name in fractions}}
    for name in sorted(files_by_class):
        files = sorted(files_by_class[name])
        needed = 1 + len(fractions)
        if len(files) < needed:
            raise errors.DataError(
                f"class {name!r} has {len(files)} image(s), too few to split into train, "
                f"{' and '.join(fractions)} ({needed} at least); add images or give split "
                "folders (train/, val/, test/).")
        order = rng.permutation(len(files))
        start = 0
        for split, fraction in fractions.items():
            count = max(1, round(fraction * len(files)))
            result[split][name] = sorted(files[i] for i in order[start:start + count])
            start += count
        result["train"][name] = sorted(files[i] for i in order[start:])
    return result


def plan(root: Path, seed: int = 42, skip_bad: bool = False) -> dict[str, Any]:
    """Which file goes to which split: the record the run folder and the manifest keep."""
    root = Path(root)
    if not root.exists():
        raise errors.DataError(f"dataset folder {root} does not exist. Check the path.")
    if not root.is_dir():
        raise errors.DataError(f"{root} is not a folder; --data takes fashion-mnist or a folder "
                               "of class folders.")
    found = split_folders(root)
    skipped: list[str] = []
    if found:
        splits = {}
        for split, folder in found.items():
            classes, bad = list_classes(folder, skip_bad)
            prefix = folder.relative_to(root).as_posix()
            splits[split] = {name: [f"{prefix}/{f}" for f in files] for name, files in classes.items()}
            skipped += [f"{prefix}/{f}" for f in bad]
        layout = "split folders"
    else:
        classes, skipped = list_classes(root, skip_bad)
        splits = {"train": classes}
        layout = "class folders"
    check_classes(root, splits)
    missing = {name: fraction for name, fraction in DEFAULT_FRACTIONS.items() if name not in splits}
    carved = carve(splits["train"], missing, seed) if missing else {"train": splits["train"]}
    splits = {**splits, **carved}
    labels = read_labels(root, splits["train"])
    return {
        "kind": "folder", "root": str(root.resolve()), "layout": layout, "labels": list(labels),
        "seed": seed, "carved": {name: fraction for name, fraction in missing.items()},
        "skipped_not_images": skipped,
        "files": {split: {name: splits[split][name] for name in labels}
                  for split in ("train", "validation", "test")},
    }


def infer_contract(root: Path, record: dict[str, Any], size: tuple[int, int] | None,
                   color: str | None) -> InputContract:
    """The contract to train with: the folder's most common size (capped) and colour."""
    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    all_grey = True
    for relative in _all_files(record):
        try:
            with Image.open(Path(root) / relative) as image:
                sizes[(image.height, image.width)] += 1
                all_grey = all_grey and image.mode in GREY_MODES
        except Exception:  # unreadable: reported (or skipped) when the images are prepared
            continue
    if size is None:
        height, width = sizes.most_common(1)[0][0] if sizes else (64, 64)
        scale = min(1.0, contract_module.MAX_DEFAULT_SIZE / max(height, width))
        size = (max(contract_module.MIN_SIZE, round(height * scale)),
                max(contract_module.MIN_SIZE, round(width * scale)))
    if min(size) < contract_module.MIN_SIZE:
        raise errors.DataError(f"image size {size[0]}x{size[1]} is below the "
                               f"{contract_module.MIN_SIZE}-pixel minimum.")
    color = color or ("grayscale" if all_grey else "rgb")
    channels = 1 if color == "grayscale" else 3
    return InputContract(height=size[0], width=size[1], channels=channels,
                         labels=tuple(record["labels"]),
                         preparation=contract_module.default_preparation(channels),
                         description=f"images of {record['root']}, prepared with Pillow")


def _all_files(record: dict[str, Any]) -> list[str]:
    return [f for split in record["files"].values() for files in split.values() for f in files]


def prepare_split(root: Path, files_by_class: dict[str, list[str]], contract: InputContract,
                  skip_bad: bool, skipped: list[str],
                  echo: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                      list[str]]:
    """Decode and resize one split: uint8 ``[N, H, W, C]``, labels, and the files used."""
    pixels, labels, used = [], [], []
    for index, name in enumerate(contract.labels):
        for relative in files_by_class.get(name, []):
            try:
                prepared = images.prepare(Path(root) / relative, contract)
            except errors.ImageError as error:
                if not skip_bad:
                    raise errors.DataError(f"{error} Fix or remove it, or pass "
                                           "--skip-bad-images to skip and count such files.") from None
                skipped.append(relative)
                continue
            pixels.append(prepared.pixels)
            labels.append(index)
            used.append(relative)
    shape = (0, *contract.shape)
    stacked = np.stack(pixels) if pixels else np.zeros(shape, np.uint8)
    return stacked, np.asarray(labels, dtype=np.int64), used


def duplicates_across(root: Path, first: list[str], second: list[str]) -> int:
    """How many files of ``second`` have a byte-identical twin in ``first``."""
    def digest(relative: str) -> str:
        return hashlib.sha256((Path(root) / relative).read_bytes()).hexdigest()

    seen = {digest(relative) for relative in first}
    return sum(digest(relative) in seen for relative in second)
