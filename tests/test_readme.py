"""scripts/update_readme.py: the generated sections of README.md and docs/ are filled between
markers, each in the file PLACES names, and match what the script renders from exported/."""

import json
import re
import sys

import pytest

from conftest import EXPORTED, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import update_readme  # noqa: E402


def between(text: str, name: str) -> str:
    match = re.search(rf"<!-- BEGIN:{name} -->\n(.*?)<!-- END:{name} -->", text, re.S)
    assert match, name
    return match.group(1).removesuffix("\n")


def test_replace_fills_empty_and_filled_sections():
    text = "a\n<!-- BEGIN:x -->\n<!-- END:x -->\nb\n"
    once = update_readme.replace(text, "x", "one\ntwo")
    assert once == "a\n<!-- BEGIN:x -->\none\ntwo\n<!-- END:x -->\nb\n"
    assert update_readme.replace(once, "x", "three") == "a\n<!-- BEGIN:x -->\nthree\n<!-- END:x -->\nb\n"
    with pytest.raises(SystemExit, match="docs/x.md has no y markers"):
        update_readme.replace(text, "y", "z", "docs/x.md")


def test_fill_writes_only_when_a_section_changed(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- BEGIN:x -->\n<!-- END:x -->\n<!-- BEGIN:y -->\nold\n<!-- END:y -->\n")
    assert update_readme.fill(page, {"x": "one", "y": "two"})
    filled = page.read_text()
    assert between(filled, "x") == "one" and between(filled, "y") == "two"
    assert not update_readme.fill(page, {"x": "one", "y": "two"})  # a second run changes nothing
    assert page.read_text() == filled and not list(tmp_path.glob("*.tmp"))


def test_every_generated_section_has_markers_in_its_own_file_only():
    expected = {"run", "accuracy", "artifacts", "parity", "benchmark", "comparison",
                "explain", "serve", "benchmark-method", "sweep", "layers"}
    assert set(update_readme.PLACES) == expected
    files = set(update_readme.PLACES.values())
    for name, place in update_readme.PLACES.items():
        for path in files:
            text = path.read_text()
            present = f"<!-- BEGIN:{name} -->" in text and f"<!-- END:{name} -->" in text
            assert present == (path == place), (name, path)


def test_generated_sections_match_what_the_script_renders_from_exported():
    """README.md and docs/ hold exactly what update_readme.py renders from exported/ today."""
    bodies = update_readme.sections(EXPORTED)
    assert {"run", "accuracy", "artifacts", "parity", "benchmark", "benchmark-method",
            "sweep"} <= set(bodies)
    for name, body in bodies.items():
        path = update_readme.PLACES[name]
        assert between(path.read_text(), name) == body, (
            f"{path.relative_to(ROOT)}: section {name} is stale; run python scripts/update_readme.py")


def test_readme_stays_a_short_guide_and_its_links_resolve():
    text = update_readme.README.read_text()
    assert len(text.splitlines()) < 250
    pages = [update_readme.README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)


def test_run_section_says_when_training_was_adopted_from_a_finished_run():
    run = {"wall_seconds": 600.0, "cpus": 2, "machine": "x86_64", "python": "3.11.2",
           "steps_seconds": {"train": 1.0, "export": 99.0}}
    assert "adopted" not in update_readme.run_section(run)
    run["adopted_run"] = {"folder": "runs/edge", "train_seconds": 2580.4}
    text = update_readme.run_section(run)
    assert "EDGEKIT_FROM_RUN=runs/edge" in text and "2580 s (43.0 min)" in text


def test_explain_and_serve_sections_render_from_their_reports():
    explain = json.loads((EXPORTED / "reports" / "explain.json").read_text())
    text = update_readme.explain_section(explain)
    first = explain["artifacts"][0]
    assert f"{first['measures']['mean_rank_correlation']:.3f}" in text
    assert ("every artifact passed" in text) == explain["passed"]
    serve = json.loads((EXPORTED / "reports" / "serve_benchmark.json").read_text())
    text = update_readme.serve_section(serve, 2)
    ours = next(row for row in serve["rows"] if row["server"] == "edgekit serve" and row["clients"] == 16)
    assert f"edgekit serve answers {ours['requests_per_second']:,.0f} requests/s" in text
