"""The page at `/` in a real headless Chromium (Debian's), driven by Playwright.

The browser uploads a test image through the page's file input and the test reads the label
the page shows; it also checks that the page fetched nothing but this server. A screenshot is
saved under the test's tmp dir; with EDGEKIT_UPDATE_SCREENSHOT=1 it is copied to
docs/serve-page.png (the picture in docs/serve.md):

    EDGEKIT_UPDATE_SCREENSHOT=1 .venv/bin/pytest tests/test_serve_browser.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# This machine refuses outbound connections: nothing the browser does on its own may need them.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "serve-page.png"

if not CHROMIUM.is_file():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it: "
                "apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the dev extra (playwright)")
pytest.importorskip("fastapi", reason="needs the serve extra")

from test_serve import start_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("browser"))
    yield live
    live.stop()


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 900, "height": 620})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_upload_through_the_page_shows_the_label(server, page, test_split, tmp_path):
    boot = tmp_path / "ankle-boot.png"
    # A photo-like upload: the test image enlarged on a light background, so the page shows
    # the preparation (inversion, margin crop, resize) turning it back into the model's input.
    garment = Image.fromarray(255 - test_split.images[0, :, :, 0])
    picture = garment.resize((168, 168), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (240, 240), 255)
    canvas.paste(picture, (36, 36))
    canvas.save(boot)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.url)
    sync_api.expect(page.locator("#model")).to_contain_text("model_int8.tflite")
    sync_api.expect(page.locator("#model")).to_contain_text("parity passed")
    page.set_input_files("#file", str(boot))
    sync_api.expect(page.locator("#label")).to_have_text("Ankle boot", timeout=15_000)
    assert page.locator(".bar").count() == 5
    prepared_width = page.eval_on_selector("#prepared", "img => img.complete && img.naturalWidth")
    assert prepared_width == 28  # the model's input, as the model sees it
    assert page.locator("#steps li").count() >= 2  # inverted, cropped, resized
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGEKIT_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, SCREENSHOT)
    foreign = [url for url in requested if not url.startswith((server.url, "data:", "blob:"))]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"


def test_a_bad_file_shows_the_servers_error(server, page, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    page.goto(server.url)
    page.set_input_files("#file", str(bad))
    sync_api.expect(page.locator("#error")).to_contain_text("422 not_an_image", timeout=15_000)
    # and the page (and server) go on: a good image next is labelled
    good = tmp_path / "boot.webp"
    good.write_bytes((ROOT / "tests" / "data" / "odd" / "boot.webp").read_bytes())
    page.set_input_files("#file", str(good))
    sync_api.expect(page.locator("#error")).to_be_hidden()
    sync_api.expect(page.locator("#label")).to_have_text("Ankle boot", timeout=15_000)
