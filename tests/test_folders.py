"""Folder datasets: layouts, the recorded split, the inferred contract, and every bad dataset."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from edgekit import errors
from edgekit.device import datasets, folders, images


def write_class_folders(root: Path, classes: dict[str, int], size=(20, 30), mode="RGB",
                        suffix=".png") -> Path:
    """Class folders of small real-looking images (a gradient and a class-dependent square)."""
    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            height, width = size
            pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            pixels[2:8, 2 + 3 * index:8 + 3 * index] = 255
            image = Image.fromarray(pixels)
            (image.convert("L") if mode == "L" else image).save(folder / f"{number:03d}{suffix}")
    return root


@pytest.fixture()
def three_classes(tmp_path) -> Path:
    return write_class_folders(tmp_path / "shapes", {"circle": 12, "crème brûlée": 10, "star x": 11})


def test_split_is_stratified_recorded_and_a_pure_function(three_classes):
    record = folders.plan(three_classes, seed=7)
    again = folders.plan(three_classes, seed=7)
    assert record == again
    assert record["labels"] == ["circle", "crème brûlée", "star x"]
    files = record["files"]
    every = [f for split in files.values() for names in split.values() for f in names]
    assert len(every) == len(set(every)) == 33  # each image in exactly one split
    for name, count in (("circle", 12), ("crème brûlée", 10), ("star x", 11)):
        assert len(files["test"][name]) == round(0.1 * count) or len(files["test"][name]) == 1
        assert len(files["validation"][name]) >= 1
    assert folders.plan(three_classes, seed=8)["files"] != files  # the seed matters
    assert not any(path.name == "split.json" for path in three_classes.rglob("*"))  # nothing written


def test_inferred_contract_and_prepared_arrays(three_classes):
    dataset = datasets.open_dataset(three_classes)
    assert dataset.contract.shape == (20, 30, 3)  # the folder's size, RGB
    assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (20, 30, 3)
    assert len(dataset.train) + len(dataset.validation) + len(dataset.test) == 33
    # Every array equals what predict's own preparation makes of the same file.
    first = dataset.test.files[0]
    prepared = images.prepare(three_classes / first, dataset.contract)
    assert np.array_equal(dataset.test.images[0], prepared.pixels)


def test_grey_folder_is_grey_and_size_is_capped(tmp_path):
    root = write_class_folders(tmp_path / "grey", {"a": 4, "b": 4}, size=(300, 450), mode="L")
    contract = datasets.open_dataset(root).contract
    assert contract.channels == 1 and contract.preparation.color == "grayscale"
    assert max(contract.height, contract.width) == 224  # capped, aspect kept
    chosen = datasets.open_dataset(root, size=(16, 16), color="rgb").contract
    assert chosen.shape == (16, 16, 3)


def test_split_folders_and_labels_file(tmp_path):
    root = tmp_path / "split"
    write_class_folders(root / "train", {"cat": 5, "dog": 5})
    write_class_folders(root / "validation", {"cat": 2, "dog": 2})
    write_class_folders(root / "test", {"cat": 3, "dog": 3})
    (root / "labels.txt").write_text("dog\ncat\n")
    dataset = datasets.open_dataset(root)
    assert dataset.contract.labels == ("dog", "cat")
    assert len(dataset.train) == 10 and len(dataset.validation) == 4 and len(dataset.test) == 6
    assert all(name.startswith("test/") for name in dataset.test.files)
    assert dataset.record["layout"] == "split folders" and dataset.record["carved"] == {}


def test_replaying_a_record_keeps_the_test_images_when_files_are_added(three_classes):
    record = folders.plan(three_classes)
    write_class_folders(three_classes, {"circle": 20})  # more images arrive later
    replayed = datasets.open_dataset(three_classes, record=record, splits=("test",))
    assert list(replayed.test.files) == [f for name in record["labels"]
                                         for f in record["files"]["test"][name]]


def bad(root: Path, *fragments: str, **options) -> None:
    with pytest.raises(errors.DataError) as caught:
        datasets.open_dataset(root, **options)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_bad_datasets(tmp_path, three_classes):
    bad(tmp_path / "absent", "does not exist")
    (tmp_path / "empty").mkdir()
    bad(tmp_path / "empty", "holds no class folders")
    write_class_folders(tmp_path / "one", {"only": 5})
    bad(tmp_path / "one", "one class (only)", "at least two")
    write_class_folders(tmp_path / "hollow", {"a": 5})
    (tmp_path / "hollow" / "b").mkdir()
    bad(tmp_path / "hollow", "holds no images")
    write_class_folders(tmp_path / "few", {"a": 5, "b": 2})
    bad(tmp_path / "few", "class 'b' has 2 image(s), too few to split")
    mismatch = tmp_path / "mismatch"
    write_class_folders(mismatch / "train", {"a": 4, "b": 4})
    write_class_folders(mismatch / "test", {"a": 2, "c": 2})
    bad(mismatch, "the test split has classes a, c but train has a, b")
    (three_classes / "labels.txt").write_text("circle\nsquare\n")
    bad(three_classes, "labels.txt lists circle, square")


def test_a_file_that_is_not_an_image_is_named_or_skipped(three_classes):
    (three_classes / "circle" / "notes.txt").write_text("not a picture")
    bad(three_classes, "circle/notes.txt is not an image", "--skip-bad-images")
    (three_classes / "circle" / "notes.txt").unlink()
    broken = three_classes / "star x" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad(three_classes, "broken.png", "--skip-bad-images")
    (three_classes / "circle" / "notes.txt").write_text("not a picture")
    dataset = datasets.open_dataset(three_classes, skip_bad=True)
    assert sorted(dataset.record["skipped"]) == ["circle/notes.txt", "star x/broken.png"]
    assert any("skipped 2 file(s)" in warning for warning in dataset.warnings)


def test_duplicates_across_train_and_test_are_counted(three_classes):
    record = folders.plan(three_classes)
    test_file = record["files"]["test"]["circle"][0]
    train_file = record["files"]["train"]["circle"][0]
    shutil.copy(three_classes / train_file, three_classes / test_file)
    dataset = datasets.open_dataset(three_classes)
    assert any(warning.startswith("1 test image(s) are byte-identical") for warning in dataset.warnings)


def test_data_command_on_a_folder_and_on_bad_folders(three_classes, tmp_path):
    result = run_cli("data", "--data", str(three_classes), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["labels"] == ["circle", "crème brûlée", "star x"]
    assert summary["contract"]["height"] == 20 and summary["contract"]["channels"] == 3
    write_class_folders(tmp_path / "one", {"only": 5})
    result = run_cli("data", "--data", str(tmp_path / "one"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: {tmp_path / 'one'} has one class (only); a classifier needs at least two class "
        "folders."]
