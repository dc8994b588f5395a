"""The command line: help, errors a user can make, and what they see."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, assert_stopped_with_one_line, run_cli, start_edgekit
from edgekit import cli

SUBCOMMANDS = sorted(cli.main.commands)


def test_every_subcommand_is_covered():
    assert {"data", "train", "evaluate", "export", "verify", "predict"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=SUBCOMMANDS)
def test_subcommand_help(runner, command):
    result = runner.invoke(cli.main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: main " + command in result.output or f"{command} [OPTIONS]" in result.output


def test_help_does_not_import_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from edgekit import cli; "
            "r = CliRunner().invoke(cli.main, ['--help']); assert r.exit_code == 0; "
            "[CliRunner().invoke(cli.main, [c, '--help']) for c in cli.main.commands]; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'tf2onnx', 'onnx', 'matplotlib', 'sklearn')]; "
            "print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_unknown_option(runner):
    result = run_cli("train", "--epoch-count", "3")
    assert_one_error_line(result, "No such option", "--epoch-count")
    assert result.returncode == 1


def test_bad_option_value():
    result = run_cli("train", "--epochs", "0")
    assert_one_error_line(result, "epochs must be at least 1")
    assert result.returncode == 1


def test_missing_model_for_evaluate(tmp_path):
    result = run_cli("evaluate", "--model", str(tmp_path / "absent.keras"))
    assert_one_error_line(result, "does not exist", "edgekit train")
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_corrupt_keras_model(tmp_path):
    """Also the workstation's quiet start: the command imports TensorFlow (Keras fails to read
    the file), and its stderr is the Error line alone: no Abseil preamble, no "cudart_stub" or
    "oneDNN" line (edgekit.workstation.tf_startup)."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a zip archive at all")
    result = run_cli("export", "--model", str(model), env={"EDGEKIT_VERBOSE": ""})
    assert_one_error_line(result, "cannot load Keras model")
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        next(line for line in result.stderr.splitlines() if line.startswith("Error:"))], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a file, not a folder")
    result = run_cli("train", "--limit", "100", "--output-dir", str(blocker / "run"))
    assert_one_error_line(result, "cannot create folder")


def test_missing_data_folder(tmp_path):
    result = run_cli("data", "--data", str(tmp_path / "none"))
    assert_one_error_line(result, "does not exist", "Check the path")


def test_a_truncated_fashion_mnist_folder_names_the_fix(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
    result = run_cli("data", "--data", str(tmp_path))
    assert_one_error_line(result, "apt-get install dataset-fashion-mnist")


def test_data_json():
    result = run_cli("data", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train"]["images"] == 60_000


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and "edgekit" in result.stdout
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert declared in result.stdout


def wait_for_line(process: subprocess.Popen, fragment: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    assert process.stdout is not None
    while fragment not in process.stdout.readline():
        assert time.monotonic() < deadline and process.poll() is None, f"never printed {fragment!r}"


BENCHMARK_FOREVER = ("benchmark", "--no-keras", "--runs", "100000")


@pytest.mark.parametrize("signal_number, code, prefix", [
    (signal.SIGINT, 130, "Error: interrupted"),
    (signal.SIGTERM, 143, "Error: terminated"),
], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_benchmark_is_one_error_line_and_leaves_no_partial_files(
        exported_copy, signal_number, code, prefix):
    before = sorted(path.name for path in exported_copy.rglob("*"))
    process = start_edgekit(BENCHMARK_FOREVER[0], str(exported_copy), *BENCHMARK_FOREVER[1:])
    wait_for_line(process, "benchmarking")  # mid-measurement
    process.send_signal(signal_number)
    assert_stopped_with_one_line(process, code, prefix)
    # Nothing new, nothing half-written: the report was never started.
    assert sorted(path.name for path in exported_copy.rglob("*")) == before


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 4.0], ids=lambda delay: f"after-{delay}s")
def test_sigterm_soon_after_start(exported_copy, delay):
    """The handler is in place before the heavy imports: a SIGTERM at any moment is honoured."""
    process = start_edgekit(BENCHMARK_FOREVER[0], str(exported_copy), *BENCHMARK_FOREVER[1:])
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    assert_stopped_with_one_line(process, 143, "Error: terminated")


def test_ignored_sigterm_is_respected(exported_copy):
    """Whoever ignores SIGTERM on purpose keeps it ignored (as with SIGINT and nohup)."""
    code = ("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "sys.argv = ['edgekit', '--version']; "
            "from edgekit.cli import signals; signals.install(); "
            "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
