"""Shared fixtures: the committed exported/ folder, the dataset, a CLI runner, a tiny pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
EXPORTED = ROOT / "exported"
ARTIFACTS = ["model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite",
             "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


requires_tensorflow = pytest.mark.skipif(not has_module("tensorflow"),
                                         reason="needs the train extra (TensorFlow)")


@pytest.fixture(scope="session")
def exported() -> Path:
    if not (EXPORTED / "manifest.json").is_file():
        pytest.fail("exported/manifest.json is missing: run scripts/main.sh")
    return EXPORTED


@pytest.fixture(scope="session")
def test_split():
    from edgekit.device import datasets

    return datasets.load_test()


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``edgekit`` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT,
                          timeout=timeout)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a tiny model on a slice for one epoch and export all six artifacts."""
    if not has_module("tensorflow"):
        pytest.skip("needs the train extra (TensorFlow)")
    folder = tmp_path_factory.mktemp("tiny")
    trained = run_cli("train", "--arch", "reference", "--limit", "3000", "--epochs", "1",
                      "--output-dir", str(folder))
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_cli("export", "--model", str(folder / "model.keras"), "--format", "all",
                       "--calibration-size", "200")
    assert exported.returncode == 0, exported.stderr[-2000:]
    return folder


@pytest.fixture()
def exported_copy(exported: Path, tmp_path: Path) -> Path:
    """A private copy of exported/ (without reports) that a test may damage."""
    target = tmp_path / "exported"
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("reports", "checkpoints", "reference"))
    return target
