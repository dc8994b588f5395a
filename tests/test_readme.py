"""scripts/update_readme.py: the README's generated sections are filled between markers."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import update_readme  # noqa: E402


def test_replace_fills_empty_and_filled_sections():
    text = "a\n<!-- BEGIN:x -->\n<!-- END:x -->\nb\n"
    once = update_readme.replace(text, "x", "one\ntwo")
    assert once == "a\n<!-- BEGIN:x -->\none\ntwo\n<!-- END:x -->\nb\n"
    assert update_readme.replace(once, "x", "three") == "a\n<!-- BEGIN:x -->\nthree\n<!-- END:x -->\nb\n"
    with pytest.raises(SystemExit, match="no y markers"):
        update_readme.replace(text, "y", "z")


def test_every_generated_section_of_the_readme_has_markers():
    text = (ROOT / "README.md").read_text()
    for name in ("run", "accuracy", "artifacts", "parity", "benchmark", "sweep", "comparison"):
        assert f"<!-- BEGIN:{name} -->" in text and f"<!-- END:{name} -->" in text, name


def test_run_section_says_when_training_was_adopted_from_a_finished_run():
    run = {"wall_seconds": 600.0, "cpus": 2, "machine": "x86_64", "python": "3.11.2",
           "steps_seconds": {"train": 1.0, "export": 99.0}}
    assert "adopted" not in update_readme.run_section(run)
    run["adopted_run"] = {"folder": "runs/edge", "train_seconds": 2580.4}
    text = update_readme.run_section(run)
    assert "EDGEKIT_FROM_RUN=runs/edge" in text and "2580 s (43.0 min)" in text
