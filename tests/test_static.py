"""Type hints on all of toolkit/edgekit are checked (mypy), and the code is lint-clean (ruff)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="needs the dev extra")
def test_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="needs the dev extra")
def test_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "toolkit", "tests", "scripts"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None, reason="needs the dev extra")
def test_import_contracts():
    """The device/workstation boundary (pyproject.toml's [tool.importlinter] contracts)."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_is_too_big():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for path in (ROOT / "toolkit" / "edgekit").rglob("*.py")}
    assert not {name: lines for name, lines in sizes.items() if lines > 450}
