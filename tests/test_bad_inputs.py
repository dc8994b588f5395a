"""The corpus under tests/data/ (scripts/make_bad_inputs.py): broken inputs get one Error:
line and exit 1, nothing hangs; odd but valid images are labelled."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, keep_only, run_cli

DATA = ROOT / "tests" / "data"
BAD_IMAGES = sorted((DATA / "bad" / "images").iterdir())
# Valid models of another contract (32x32 input, 5 classes): they run on their own, with the
# contract their tensors give, and are refused inside a release whose manifest records another.
OTHER_CONTRACT = ("wrong-input-shape.onnx", "wrong-input-shape.tflite", "five-classes.onnx",
                  "five-classes.tflite")
BAD_MODELS = sorted(path for path in (DATA / "bad" / "models").iterdir()
                    if path.name not in OTHER_CONTRACT)
ODD_IMAGES = sorted((DATA / "odd").iterdir())


def assert_clean_error(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("path", BAD_IMAGES, ids=[p.name for p in BAD_IMAGES])
def test_broken_image(exported, path):
    result = run_cli("predict", str(path), "--model", str(exported / "model_int8.tflite"), timeout=60)
    assert_clean_error(result, path.name)


@pytest.mark.parametrize("kind", ["missing", "folder", "dangling-link"])
def test_missing_or_folder_image(exported, tmp_path, kind):
    target = tmp_path / "absent.png" if kind == "missing" else tmp_path
    if kind == "dangling-link":
        target = tmp_path / "link.png"
        target.symlink_to(tmp_path / "gone.png")
    result = run_cli("predict", str(target), "--model", str(exported / "model_int8.tflite"))
    assert_clean_error(result)


@pytest.mark.parametrize("path", BAD_MODELS, ids=[p.name for p in BAD_MODELS])
def test_broken_model(exported, tmp_path, path):
    image = tmp_path / "boot.png"
    shutil.copy(DATA / "odd" / "colour.bmp", image)
    # Copy the model into its own folder, where no manifest vouches for it.
    model = tmp_path / "models" / path.name
    model.parent.mkdir()
    shutil.copy(path, model)
    result = run_cli("predict", str(image), "--model", str(model), timeout=60)
    assert_clean_error(result, path.name)


def test_broken_model_messages(tmp_path):
    def error_for(name):
        model = tmp_path / name
        shutil.copy(DATA / "bad" / "models" / name, model)
        result = run_cli("predict", str(DATA / "odd" / "colour.bmp"), "--model", str(model))
        return result.stderr

    assert "escapes model directory" in error_for("external-data-outside.onnx")
    assert "rename it to .tflite" in error_for("tflite-named.onnx")
    assert "an ONNX file renamed?" in error_for("onnx-named.tflite")
    assert "input tensor pixels is int32" in error_for("int32-input.onnx")
    assert "has 2 input(s)" in error_for("two-inputs.onnx")
    assert "produced NaN or infinite outputs" in error_for("nan-weights.onnx")
    assert "this one is a TFLite flatbuffer: rename it to .tflite" in error_for("no-extension")


@pytest.mark.parametrize("name", OTHER_CONTRACT)
def test_a_model_of_another_contract_runs_alone_and_is_refused_in_a_release(exported_copy, name):
    alone = exported_copy.parent / "alone" / name
    alone.parent.mkdir()
    shutil.copy(DATA / "bad" / "models" / name, alone)
    result = run_cli("predict", "--json", str(DATA / "odd" / "colour.bmp"), "--model", str(alone))
    assert result.returncode == 0, result.stderr
    label = json.loads(result.stdout)["results"][0]["predictions"][0]["label"]
    assert label.startswith("class "), label  # no labels in the file: placeholders
    # In a release: the manifest's contract (28x28x1, 10 classes) wins over the file's tensors.
    target = exported_copy / ("model_fp32" + alone.suffix)
    shutil.copy(alone, target)
    result = run_cli("predict", str(DATA / "odd" / "colour.bmp"), "--model", str(target),
                     "--no-verify-sha256")
    expected = ("takes input of shape [None, 32, 32, 1], not [N, 28, 28, 1] as its manifest records"
                if name.startswith("wrong") else "not a 10-class classifier")
    assert_clean_error(result, target.name, expected)


def test_odd_images_are_labelled(exported):
    result = run_cli("predict", "--json", "--model", str(exported / "model_int8.tflite"),
                     *map(str, ODD_IMAGES), timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert len(results) == len(ODD_IMAGES)
    labels = {Path(item["image"]).name: item["predictions"][0]["label"] for item in results}
    # Every one is the same ankle boot, but the 1x1 thumbnail keeps no shape to recognise.
    wrong = {name: label for name, label in labels.items()
             if label != "Ankle boot" and name != "one-pixel.png"}
    assert not wrong, wrong


@pytest.mark.parametrize("kind, fragment", [
    ("not-json", "not valid JSON"),
    ("missing-fields", "lacks"),
    ("sha-mismatch", "does not match its manifest"),
    ("outside", "refusing it"),
    ("absolute", "refusing it"),
])
def test_tampered_manifest(exported_copy, kind, fragment):
    path = exported_copy / "manifest.json"
    payload = json.loads(path.read_text())
    if kind == "not-json":
        path.write_text("{ this is not json")
    else:
        if kind == "missing-fields":
            del payload["artifacts"][0]["sha256"]
        elif kind == "sha-mismatch":
            payload["artifacts"][3]["sha256"] = "0" * 64
        elif kind == "outside":
            payload["artifacts"][3]["file"] = "../model_int8.tflite"
        elif kind == "absolute":
            payload["artifacts"][3]["file"] = str(exported_copy / "model_int8.tflite")
        path.write_text(json.dumps(payload))
    image = DATA / "odd" / "colour.bmp"
    predicted = run_cli("predict", str(image), "--model", str(exported_copy / "model_int8.tflite"))
    verified = run_cli("verify", str(exported_copy), "--golden")
    for result in (predicted, verified):
        assert_clean_error(result, fragment)


def test_full_disk_during_a_write_is_one_error_and_keeps_the_old_file(exported_copy, monkeypatch):
    """ENOSPC in the middle of writing the manifest: Error line, exit 1, old manifest intact.
    (One artifact: a full verify of all six, with the int8 file's TFLM row on every test
    image, measures for a minute before reaching the same write.)"""
    import errno

    from click.testing import CliRunner

    from edgekit import cli, fileio

    keep_only(exported_copy, "model_fp32.onnx")
    before = (exported_copy / "manifest.json").read_bytes()
    real_fsync = fileio.os.fsync

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    result = CliRunner().invoke(cli.main, ["verify", str(exported_copy), "--golden"])
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert result.exit_code == 0  # --golden writes nothing
    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    result = CliRunner().invoke(cli.main, ["verify", str(exported_copy)])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert (exported_copy / "manifest.json").read_bytes() == before
    assert not list(exported_copy.glob(".*.tmp*")) and not list(exported_copy.glob("reports/.*.tmp*"))


def test_a_fifo_does_not_hang(exported, tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = run_cli("predict", str(fifo), "--model", str(exported / "model_int8.tflite"), timeout=30)
    assert_clean_error(result, "not a regular file")
    model_fifo = tmp_path / "pipe.onnx"
    os.mkfifo(model_fifo)
    result = run_cli("predict", str(DATA / "odd" / "colour.bmp"), "--model", str(model_fifo), timeout=30)
    assert_clean_error(result, "not a regular file")
