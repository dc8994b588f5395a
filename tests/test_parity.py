"""The parity suite: every released artifact against the Keras reference on all 10,000
test images, and proof that the suite catches what it should."""

import json

import numpy as np
import pytest

from conftest import ARTIFACTS, requires_tensorflow, run_cli
from edgekit import errors, manifest
from edgekit.contract import FASHION_MNIST_LABELS as LABELS
from edgekit.device import parity, runtime
from edgekit.device import verify as verify_module


def pytest_generate_tests(metafunc):
    if "artifact" in metafunc.fixturenames:
        from conftest import EXPORTED

        names = [entry["file"] for entry in manifest.load(EXPORTED)["artifacts"]]
        metafunc.parametrize("artifact", names, ids=names)


@pytest.fixture(scope="module")
def reference(exported, test_split):
    stored = np.load(exported / "reference.npz")
    assert np.array_equal(stored["labels"], test_split.labels)
    return stored["probabilities"], test_split


def test_manifest_lists_the_six(exported):
    assert sorted(entry["file"] for entry in manifest.load(exported)["artifacts"]) == sorted(ARTIFACTS)


def test_artifact_meets_its_bars(exported, reference, artifact):
    probabilities, test = reference
    entry = manifest.find_artifact(manifest.load(exported), artifact)
    outputs = runtime.load(exported / artifact).predict(test.images)
    measures = parity.measure(probabilities, outputs, test.labels, LABELS)
    checks = parity.check(measures, parity.DEFAULT_BARS[entry["precision"]])
    failed = [check for check in checks if not check.passed]
    assert not failed, failed
    # What the manifest claims is what was measured.
    metrics = entry["metrics"]
    assert metrics["images"] == 10_000
    assert metrics["accuracy"] == pytest.approx(measures["accuracy"], abs=1e-4)
    assert metrics["agreement"] == pytest.approx(measures["agreement"], abs=1e-4)
    assert metrics["flips"] == pytest.approx(len(measures["flips"]), abs=1)


def test_released_reference_accuracy(exported, reference):
    probabilities, test = reference
    accuracy = (probabilities.argmax(1) == test.labels).mean()
    assert accuracy >= 0.92
    assert manifest.load(exported)["reference"]["test_accuracy"] == pytest.approx(accuracy)


@requires_tensorflow
def test_stored_reference_matches_the_keras_model(exported, reference):
    from edgekit.workstation import evaluation

    probabilities, test = reference
    model = evaluation.load_keras_model(exported / "model.keras")
    recomputed = evaluation.predict_probabilities(model, test.images)
    assert np.abs(recomputed - probabilities).max() < 1e-5


def test_mcnemar_exact():
    right = np.array([True] * 10)
    assert parity.mcnemar_exact(right, right)["p_value"] == 1.0
    # b = 5, c = 0: p = 2 * (1/2)^5 = 0.0625
    artifact = np.array([False] * 5 + [True] * 5)
    result = parity.mcnemar_exact(right, artifact)
    assert result["reference_only_correct"] == 5 and result["artifact_only_correct"] == 0
    assert result["p_value"] == pytest.approx(0.0625)
    # b = 3, c = 1: p = 2 * (1 + 4) / 16 = 0.625
    reference_correct = np.array([True, True, True, False, True])
    artifact_correct = np.array([False, False, False, True, True])
    assert parity.mcnemar_exact(reference_correct, artifact_correct)["p_value"] == pytest.approx(0.625)


def test_measure_arithmetic():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    outputs = np.array([[0.8, 0.2], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]], np.float32)
    labels = np.array([0, 1, 0, 0])
    padded = lambda a: np.pad(a, ((0, 0), (0, 8)))  # noqa: E731 - ten classes
    result = parity.measure(padded(reference), padded(outputs), labels, LABELS)
    assert result["agreement"] == 0.75
    assert result["reference_accuracy"] == 0.75 and result["accuracy"] == 0.5
    assert result["accuracy_drop_pp"] == pytest.approx(25.0)
    assert result["max_abs_diff"] == pytest.approx(0.2)
    assert result["flips"] == [{"index": 2, "true": "T-shirt/top", "reference": "T-shirt/top",
                                "artifact": "Trouser", "near_tie": False}]


def test_bar_overrides():
    bars = parity.with_overrides(parity.DEFAULT_BARS, ["int8.agreement=99.5",
                                                      "fp32.max_abs_diff=none"])
    assert bars["int8"].min_agreement_percent == 99.5
    assert bars["fp32"].max_abs_diff is None
    for bad in ("int8.agreement", "int9.agreement=1", "int8.speed=1", "int8.agreement=none"):
        with pytest.raises(ValueError):
            parity.with_overrides(parity.DEFAULT_BARS, [bad])


def perturb_onnx(path, scale):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32 and weights.size > 1000:
            noisy = weights + rng.normal(0, scale * weights.std(), weights.shape).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, path)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("onnx"), reason="needs onnx")
def test_perturbed_weights_are_caught(exported_copy):
    path = exported_copy / "model_fp32.onnx"
    perturb_onnx(path, 0.05)
    results = verify_module.verify(exported_copy, parity.DEFAULT_BARS, golden=True, write=False,
                                   echo=lambda line: None)
    by_file = {result.file: result for result in results}
    # The sha256 check refuses it first...
    assert "does not match its manifest" in by_file["model_fp32.onnx"].error
    # ...and with the manifest updated to the new hash, the parity bars catch it.
    payload = manifest.load(exported_copy)
    from edgekit import fileio

    manifest.find_artifact(payload, "model_fp32.onnx")["sha256"] = fileio.sha256_of(path)
    manifest.save(exported_copy, payload)
    results = verify_module.verify(exported_copy, parity.DEFAULT_BARS, golden=True, write=False,
                                   echo=lambda line: None)
    failed = {result.file: result for result in results if not result.passed}
    assert list(failed) == ["model_fp32.onnx"]
    assert any("max_abs_diff" in failure for failure in failed["model_fp32.onnx"].failures())


def test_wrong_input_scaling_is_caught(exported, reference):
    probabilities, test = reference
    model = runtime.load(exported / "model_fp32.tflite")
    # A device that normalises to [0, 1] itself, forgetting scaling is inside the model.
    images = test.images[:2000]
    wrong = model.predict(np.rint(images / 255.0).astype(np.uint8))
    measures = parity.measure(probabilities[:2000], wrong, test.labels[:2000], LABELS)
    assert not all(check.passed for check in parity.check(measures, parity.DEFAULT_BARS["fp32"]))
    # And one that feeds inverted pixels (dark garment on white).
    inverted = model.predict(255 - images)
    measures = parity.measure(probabilities[:2000], inverted, test.labels[:2000], LABELS)
    assert measures["agreement"] < 0.5


# The release's full `edgekit verify` (parity.json, parity.md, the too-few-images warning) runs
# once, with --explanations: tests/test_explain.py::
# test_verify_explanations_writes_the_parity_and_explanation_reports.


def test_verify_cli_fails_on_a_flipped_byte(exported_copy):
    path = exported_copy / "model_int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_cli("verify", str(exported_copy), "--golden")
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "model_int8.onnx" in error_lines[0]
    assert "does not match its manifest" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_verify_golden_is_fast_and_dataset_free(exported, tmp_path):
    result = run_cli("verify", str(exported), "--golden", env={"EDGEKIT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 6 artifacts pass parity" in result.stdout


def test_tampered_manifest_entry_is_refused(exported_copy):
    payload = json.loads((exported_copy / "manifest.json").read_text())
    payload["artifacts"][0]["file"] = "../outside.onnx"
    (exported_copy / "manifest.json").write_text(json.dumps(payload))
    with pytest.raises(errors.ManifestError, match="refusing"):
        verify_module.verify(exported_copy, parity.DEFAULT_BARS, golden=True, write=False)
