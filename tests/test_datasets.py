import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekit import errors
from edgekit.contract import FASHION_MNIST_LABELS as LABELS
from edgekit.device import datasets


@pytest.fixture()
def data_copy(tmp_path: Path) -> Path:
    source = datasets.locate()
    target = tmp_path / "fashion"
    shutil.copytree(source, target)
    return target


def test_full_dataset_counts_and_balance():
    dataset = datasets.load()
    assert dataset.train.images.shape == (60_000, 28, 28, 1)
    assert dataset.test.images.shape == (10_000, 28, 28, 1)
    assert dataset.train.images.dtype == np.uint8
    assert np.bincount(dataset.train.labels).tolist() == [6000] * 10
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    # The first test image is an ankle boot: a fixed point of the standard files.
    assert LABELS[dataset.test.labels[0]] == "Ankle boot"
    summary = datasets.summary(dataset)
    assert summary["test"]["per_class"]["Bag"] == 1000


def test_explicit_folder_wins(data_copy, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(data_copy))
    assert datasets.locate() == data_copy
    assert datasets.locate(data_copy) == data_copy


def test_keras_cache_before_system(data_copy, tmp_path, monkeypatch):
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    cache.parent.mkdir(parents=True)
    shutil.copytree(data_copy, cache)
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert datasets.locate() == cache


def test_missing_folder_names_it_and_the_fix(tmp_path):
    with pytest.raises(errors.DataError) as caught:
        datasets.load(tmp_path / "nowhere")
    message = str(caught.value)
    assert "nowhere" in message and "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_folder_lacking_files(tmp_path):
    with pytest.raises(errors.DataError, match="lacks train-images-idx3-ubyte.gz, "):
        datasets.load(tmp_path)


def test_nothing_anywhere_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(datasets, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(errors.DataError) as caught:
        datasets.locate()
    assert str(tmp_path / "system") in str(caught.value)
    assert "Keras cache" in str(caught.value)


def test_truncated_file_is_an_error(data_copy):
    path = data_copy / datasets.FILES["test_images"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(errors.DataError, match="truncated"):
        datasets.load(data_copy)


def test_cut_gzip_stream_is_an_error(data_copy):
    path = data_copy / datasets.FILES["train_labels"]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(errors.DataError, match="truncated or corrupt"):
        datasets.load(data_copy)


def test_wrong_magic_is_an_error(data_copy):
    path = data_copy / datasets.FILES["test_labels"]
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[:4] = struct.pack(">I", 2051)
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(errors.DataError, match="magic number"):
        datasets.load(data_copy)


def test_swapped_files_are_an_error(data_copy):
    images = data_copy / datasets.FILES["test_images"]
    labels = data_copy / datasets.FILES["test_labels"]
    images.write_bytes(labels.read_bytes())
    with pytest.raises(errors.DataError, match="magic number"):
        datasets.load(data_copy)
