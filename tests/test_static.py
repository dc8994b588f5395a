"""Type hints on all of toolkit/edgekit are checked (mypy), and the code is lint-clean (ruff)."""

import importlib.util
import subprocess
import sys

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
