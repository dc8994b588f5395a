"""The command line: help, errors a user can make, and what they see."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
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
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a zip archive at all")
    result = run_cli("export", "--model", str(model))
    assert_one_error_line(result, "cannot load Keras model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a file, not a folder")
    result = run_cli("train", "--limit", "100", "--output-dir", str(blocker / "run"))
    assert_one_error_line(result, "cannot create folder")


def test_missing_data_dir(tmp_path):
    result = run_cli("data", "--data-dir", str(tmp_path / "none"))
    assert_one_error_line(result, "does not exist", "apt-get install dataset-fashion-mnist")


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


def test_ctrl_c_is_one_error_line_and_leaves_no_partial_files(exported_copy):
    import signal
    import time

    before = sorted(path.name for path in exported_copy.rglob("*"))
    process = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "benchmark", str(exported_copy), "--no-keras",
         "--runs", "100000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while "benchmarking" not in process.stdout.readline():  # mid-measurement
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        line for line in stderr.splitlines() if line.startswith("Error: interrupted")]
    # Nothing new, nothing half-written: the report was never started.
    assert sorted(path.name for path in exported_copy.rglob("*")) == before
