"""Shared fixtures: the committed exported/ folder, the dataset, a CLI runner, a tiny pipeline."""

from __future__ import annotations

import os
import shutil
import signal
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


# --- edgekit serve's tests (test_serve*.py) ---------------------------------------------------

@pytest.fixture(scope="module")
def client():
    """The server app (released int8 file, test_serve's limits) under FastAPI's test client."""
    from test_serve import make_client, wait_ready

    with make_client() as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def reference():
    """An independent edgekit.runtime instance of the served model (test_parity has its own
    ``reference``: the stored Keras outputs)."""
    from edgekit.device import runtime
    from test_serve import INT8

    return runtime.load(INT8)


@pytest.fixture(scope="module")
def test_pngs(test_split) -> list[bytes]:
    """The first 16 test images as PNG files."""
    from test_serve import png_bytes

    return [png_bytes(image) for image in test_split.images[:16]]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``edgekit`` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT,
                          timeout=timeout)


def start_edgekit(*arguments: str, **popen: object) -> subprocess.Popen[str]:
    """Start ``python -m edgekit.cli ARGUMENTS`` the way a background job of a script would.

    A non-interactive shell starts background jobs with SIGINT ignored, and a child inherits an
    ignored disposition (then Python installs no KeyboardInterrupt handler). So the parent here
    ignores SIGINT while it starts the child, and the child puts SIGINT back to its default
    before exec: the test sets the disposition itself instead of inheriting whatever the shell
    that launched pytest had, and shows the CLI does not depend on it.
    """
    options: dict[str, object] = {"cwd": ROOT, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                  "text": True, **popen}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [sys.executable, "-m", "edgekit.cli", *arguments],
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **options)
    finally:
        signal.signal(signal.SIGINT, previous)


def assert_stopped_with_one_line(process: subprocess.Popen[str], code: int, prefix: str,
                                 seconds: float = 20) -> None:
    """The process ends within ``seconds`` with ``code`` and one line on stderr, no traceback."""
    _, stderr = process.communicate(timeout=seconds)
    assert process.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    # Native libraries log lines of their own (LiteRT's XNNPACK delegate, TensorFlow's oneDNN
    # notice); edgekit's own output is the one Error line, last.
    lines = [line for line in stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error:")]
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], stderr[-2000:]
    assert error_lines[0].startswith(prefix), stderr[-2000:]


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


@pytest.fixture(scope="session")
def digits_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """scikit-learn's digits as grey PNG folders ("digit 0".."digit 9"), trained at 16x16, all
    six artifacts exported and verified: (data folder, release folder). One run shared by the
    own-data test and the device install's; a test that changes the release works on a copy."""
    if not has_module("tensorflow"):
        pytest.skip("needs the train extra (TensorFlow)")
    from test_own_data import digits_folder, train_export_verify

    root = tmp_path_factory.mktemp("digits")
    data = digits_folder(root / "digits")
    train_export_verify(data, root / "run", "--image-size", "16", "--epochs", "8", "--no-augment")
    return data, root / "run"


@pytest.fixture()
def exported_copy(exported: Path, tmp_path: Path) -> Path:
    """A private copy of exported/ (without reports) that a test may damage."""
    target = tmp_path / "exported"
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("reports", "checkpoints", "reference"))
    return target


def keep_only(release: Path, *names: str) -> None:
    """Trim a copied release to the artifacts ``names``: the other files and manifest entries go.

    For tests whose point does not depend on how many artifacts a release holds (a full disk,
    a comparison's pairing), so they run the code path on two files instead of six.
    """
    from edgekit import manifest

    payload = manifest.load(release)
    assert set(names) <= {entry["file"] for entry in payload["artifacts"]}, names
    for entry in payload["artifacts"]:
        if entry["file"] not in names:
            (release / entry["file"]).unlink()
    payload["artifacts"] = [entry for entry in payload["artifacts"] if entry["file"] in names]
    manifest.save(release, payload)
