"""The committed release: the edge model in exported/, the reference CNN in exported/reference/.

The targets of the release, measured again here from the committed files (not read from the
reports alone): int8 TFLite accuracy on all 10,000 test images, its size, its agreement with the
released Keras model, int8 against float; and, from the one benchmark run of both releases, the
paired single-image latency of the two int8 files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_tensorflow
from edgekit import manifest
from edgekit.device import runtime

INT8 = "model_int8.tflite"
MIN_INT8_ACCURACY = 0.933  # the target on all 10,000 test images
MAX_INT8_BYTES = 200 * 1024


@pytest.fixture(scope="module")
def released(exported: Path) -> dict:
    return manifest.load(exported)


def test_exported_holds_one_keras_model_the_edge_network(exported, released):
    assert sorted(path.relative_to(exported).as_posix() for path in exported.rglob("*.keras")) \
        == ["model.keras"]
    assert released["reference"]["architecture"] == "edge"
    reference = manifest.load(exported / "reference")
    assert reference["reference"]["architecture"] == "reference"
    # The two releases keep the same file names, so they can be compared file by file.
    assert [entry["file"] for entry in released["artifacts"]] == \
        [entry["file"] for entry in reference["artifacts"]]


def test_int8_file_meets_the_targets_on_every_test_image(exported, released, test_split):
    model = runtime.load(exported / INT8)
    probabilities = model.predict(test_split.images)
    predictions = probabilities.argmax(axis=1)
    accuracy = float((predictions == test_split.labels).mean())
    stored = np.load(exported / "reference.npz")["probabilities"]
    agreement = float((predictions == stored.argmax(axis=1)).mean())
    assert len(test_split) == 10_000
    assert accuracy >= MIN_INT8_ACCURACY, accuracy
    assert agreement >= 0.99, agreement
    assert (exported / INT8).stat().st_size <= MAX_INT8_BYTES
    assert released["reference"]["test_accuracy"] - accuracy <= 0.002  # int8 within 0.2 pp
    entry = next(entry for entry in released["artifacts"] if entry["file"] == INT8)
    assert entry["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_one_benchmark_run_timed_both_releases_int8_no_slower(exported):
    report = json.loads((exported / "reports" / "benchmark.json").read_text())
    assert [Path(item["folder"]).as_posix() for item in report["compared"]] == ["exported/reference"]
    pair = next(pair for pair in report["paired_latency"] if pair["file"] == INT8)
    assert pair["compared"] == "reference"
    assert pair["p50_ratio"] <= 1.0, pair["p50_ratio"]


def test_every_artifact_of_both_releases_passed_parity(exported):
    for folder in (exported, exported / "reference"):
        parity = json.loads((folder / "reports" / "parity.json").read_text())
        assert parity["passed"], folder


@requires_tensorflow
def test_tensorflow_interpreter_agrees(exported, test_split):
    """TensorFlow's own interpreter, not LiteRT's, scores the released int8 file the same."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated in favour of LiteRT
        interpreter = tf.lite.Interpreter(model_path=str(exported / INT8))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1000, 28, 28, 1])
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = source["quantization"]
    predictions = []
    for start in range(0, len(test_split), 1000):
        batch = test_split.images[start:start + 1000].astype(np.float32)
        interpreter.set_tensor(source["index"],
                               np.clip(np.round(batch / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        predictions.append(interpreter.get_tensor(target["index"]).argmax(axis=1))
    accuracy = float((np.concatenate(predictions) == test_split.labels).mean())
    assert accuracy >= MIN_INT8_ACCURACY, accuracy
