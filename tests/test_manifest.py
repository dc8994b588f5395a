"""The manifest: contents, round trip, and refusal of unsafe or broken entries."""

import json

import pytest

from conftest import ARTIFACTS
from edgekit import errors, fileio, manifest
from edgekit.contract import FASHION_MNIST_LABELS as LABELS


def test_released_manifest_describes_every_artifact(exported):
    payload = manifest.load(exported)
    assert payload["labels"] == list(LABELS)
    assert payload["input"]["shape"] == [None, 28, 28, 1]
    assert payload["input"]["dtype"] == "uint8"
    reference = payload["reference"]
    assert (exported / reference["file"]).is_file()
    assert fileio.sha256_of(exported / reference["file"]) == reference["sha256"]
    assert reference["training"]["config"]["seed"] is not None
    assert sorted(entry["file"] for entry in payload["artifacts"]) == sorted(ARTIFACTS)
    precisions = {(entry["format"], entry["precision"]) for entry in payload["artifacts"]}
    assert precisions == {("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "dynamic"),
                          ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
    for entry in payload["artifacts"]:
        path = exported / entry["file"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == fileio.sha256_of(path)
        assert entry["inputs"][0]["name"] and entry["outputs"][0]["name"]
        if entry["precision"] == "int8" and entry["format"] == "tflite":
            assert entry["inputs"][0]["quantization"]["scale"] == pytest.approx(1.0)
        assert entry["metrics"] is not None, f"{entry['file']} has no measured metrics"


def test_round_trip(tmp_path):
    payload = manifest.empty()
    manifest.upsert_artifact(payload, {"file": "a.onnx", "format": "onnx", "precision": "fp32",
                                       "bytes": 1, "sha256": "0" * 64, "inputs": [], "outputs": []})
    manifest.upsert_artifact(payload, {"file": "a.onnx", "format": "onnx", "precision": "int8",
                                       "bytes": 2, "sha256": "1" * 64, "inputs": [], "outputs": []})
    manifest.save(tmp_path, payload)
    loaded = manifest.load(tmp_path)
    assert loaded == json.loads(json.dumps(payload))
    assert len(loaded["artifacts"]) == 1 and loaded["artifacts"][0]["precision"] == "int8"


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", "..", ""])
def test_entries_outside_the_folder_are_refused(tmp_path, name):
    payload = manifest.empty()
    payload["artifacts"].append({"file": name, "format": "onnx", "precision": "fp32", "bytes": 1,
                                 "sha256": "0" * 64, "inputs": [], "outputs": []})
    (tmp_path / "manifest.json").write_text(json.dumps(payload))
    with pytest.raises(errors.ManifestError, match="refusing"):
        manifest.load(tmp_path)


def test_not_json_and_missing_fields(tmp_path):
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(errors.ManifestError, match="not valid JSON"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "labels": []}))
    with pytest.raises(errors.ManifestError, match="lacks input, artifacts"):
        manifest.load(tmp_path)
    with pytest.raises(errors.ManifestError, match="no manifest.json"):
        manifest.load(tmp_path / "elsewhere")


def test_labels_inside_the_files(exported):
    import onnxruntime

    for name in ("model_fp32.onnx", "model_int8.onnx"):
        session = onnxruntime.InferenceSession(str(exported / name),
                                               providers=["CPUExecutionProvider"])
        metadata = session.get_modelmeta().custom_metadata_map
        assert json.loads(metadata["labels"]) == list(LABELS)
        assert json.loads(metadata["input"])["dtype"] == "uint8"
    from edgekit.device import tflite_metadata

    for name in ("model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite",
                 "model_int8.tflite"):
        metadata = tflite_metadata.read((exported / name).read_bytes())
        assert metadata is not None and metadata["labels"] == list(LABELS)
    assert (exported / "labels.txt").read_text().splitlines() == list(LABELS)
