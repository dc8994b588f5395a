"""End to end through the CLI on a slice of the data: train, evaluate, export, verify."""

import json

import numpy as np
import pytest

from conftest import ARTIFACTS, run_cli

pytestmark = pytest.mark.slow


def test_train_outputs(tiny_pipeline):
    folder = tiny_pipeline
    for name in ("model.keras", "train_config.json", "history.json", "checkpoints/best.keras",
                 "checkpoints/last.keras"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "train_config.json").read_text())
    assert record["config"]["seed"] == 42 and record["config"]["limit"] == 3000
    assert record["train_images"] + record["validation_images"] == 3000
    history = json.loads((folder / "history.json").read_text())["epochs"]
    assert len(history) == 1
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds",
            "train_images_per_second"} <= set(history[0])
    assert history[0]["train_images_per_second"] > 0


def test_evaluate_outputs_are_consistent(tiny_pipeline, tmp_path):
    reports = tmp_path / "reports"
    result = run_cli("evaluate", "--model", str(tiny_pipeline / "model.keras"),
                     "--output-dir", str(reports))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("metrics.json", "confusion_matrix.png", "confusion_matrix.json",
                 "training_curves.png", "predictions.png", "samples.png",
                 "classification_report.txt"):
        assert (reports / name).is_file(), name
        assert (reports / name).stat().st_size > 0
    metrics = json.loads((reports / "metrics.json").read_text())
    matrix = np.array(json.loads((reports / "confusion_matrix.json").read_text())["matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 10_000 == metrics["test_images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert matrix.sum(axis=1).tolist() == [1000] * 10  # rows are true classes
    assert f"test accuracy {metrics['accuracy']:.2%}" in result.stdout
    # A one-epoch model on 3,000 images is weak but far above chance.
    assert metrics["accuracy"] > 0.5
    per_class_recall = [metrics["per_class"][label]["recall"] for label in metrics["labels"]]
    assert np.mean(per_class_recall) == pytest.approx(metrics["accuracy"], abs=1e-9)


def test_export_writes_six_artifacts_and_manifest(tiny_pipeline):
    manifest = json.loads((tiny_pipeline / "manifest.json").read_text())
    assert sorted(entry["file"] for entry in manifest["artifacts"]) == sorted(ARTIFACTS)
    for entry in manifest["artifacts"]:
        assert (tiny_pipeline / entry["file"]).stat().st_size == entry["bytes"]


def test_verify_tiny_model(tiny_pipeline):
    # A one-epoch model is unsure of many images, so int8 rounding flips more of them than
    # it would on the released model; the float bars stay at their defaults.
    result = run_cli("verify", str(tiny_pipeline), "--bar", "int8.agreement=95",
                     "--bar", "int8.accuracy_drop=1.5", "--bar", "dynamic.agreement=98")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    parity = json.loads((tiny_pipeline / "reports" / "parity.json").read_text())
    assert parity["passed"]
    manifest = json.loads((tiny_pipeline / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        assert entry["metrics"]["images"] == 10_000
