"""Image files of every kind turned into model input, and labelled by the released model."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from edgekit import errors
from edgekit.contract import FASHION_MNIST
from edgekit.device import images


@pytest.fixture(scope="module")
def boot(test_split) -> np.ndarray:
    """Test image 0, an ankle boot: light garment on black, 28x28."""
    return test_split.images[0, :, :, 0]


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def variants(boot: np.ndarray, folder: Path) -> dict[str, Path]:
    """The same boot in many odd but valid forms."""
    grey = Image.fromarray(boot)
    big = grey.resize((280, 280), Image.Resampling.BICUBIC)
    inverted = Image.fromarray(255 - np.asarray(big))
    colour = Image.merge("RGB", [big, big.point(lambda v: v * 0.8), big.point(lambda v: v * 0.6)])
    files = {
        "png": save(grey, folder / "boot.png"),
        "jpeg-large": save(big.convert("RGB"), folder / "boot large.jpg", quality=95),
        "bmp": save(grey, folder / "boot.bmp"),
        "colour": save(colour, folder / "bööt colour.png"),
        "white-background": save(inverted, folder / "white.png"),
        "rgba": save(Image.merge("RGBA", [*inverted.convert("RGB").split(), big]),
                     folder / "alpha.png"),
        "palette": save(big.convert("P"), folder / "palette.gif"),
        "16-bit": save(Image.fromarray(np.asarray(big).astype(np.uint16) * 257), folder / "deep.png"),
        "cmyk": save(big.convert("RGB").convert("CMYK"), folder / "cmyk.jpg"),
        "wide": save(Image.fromarray(np.pad(np.asarray(big), ((0, 0), (200, 200)))),
                     folder / "wide.png"),
    }
    frames = [big, Image.fromarray(np.zeros((280, 280), np.uint8))]
    files["animated-gif"] = folder / "animated.gif"
    frames[0].save(files["animated-gif"], save_all=True, append_images=frames[1:], duration=100)
    rotated = big.rotate(90, expand=True)  # stored sideways, EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° counter-clockwise: turn clockwise to view
    files["exif-rotated"] = save(rotated.convert("RGB"), folder / "exif.jpg", exif=exif.tobytes(),
                                 quality=95)
    return files


def test_prepare_keeps_a_dataset_image_unchanged(boot, tmp_path):
    path = save(Image.fromarray(boot), tmp_path / "boot.png")
    prepared = images.prepare(path, FASHION_MNIST)
    assert prepared.pixels.shape == (28, 28, 1) and prepared.pixels.dtype == np.uint8
    assert np.array_equal(prepared.pixels[:, :, 0], boot)
    assert prepared.steps == []


def test_light_background_is_inverted_and_said(boot, tmp_path):
    path = save(Image.fromarray(255 - boot), tmp_path / "white.png")
    prepared = images.prepare(path, FASHION_MNIST)
    assert np.array_equal(prepared.pixels[:, :, 0], boot)
    assert any(step.startswith("inverted") for step in prepared.steps)


@pytest.mark.parametrize("where", ["exif", "xmp"])
def test_a_png_orientation_is_applied_from_exif_or_xmp(boot, tmp_path, where):
    """PNGs skip the EXIF lookup only when they carry neither an eXIf chunk nor XMP."""
    sideways = Image.fromarray(boot).rotate(90, expand=True)
    if where == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        path = save(sideways, tmp_path / "exif.png", exif=exif.tobytes())
    else:
        xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
               '02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
               'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        path = save(sideways, tmp_path / "xmp.png", pnginfo=info)
    prepared = images.prepare(path, FASHION_MNIST)
    assert any("EXIF orientation (6)" in step for step in prepared.steps), prepared.steps
    assert np.array_equal(prepared.pixels[:, :, 0], boot)


def test_fit_keeps_aspect_ratio():
    wide = np.full((10, 100), 200, np.uint8)
    steps: list[str] = []
    fitted = images.fit(wide, FASHION_MNIST, steps)
    rows = np.flatnonzero(fitted.max(axis=1) > 0)
    assert fitted.shape == (28, 28)
    assert 2 <= len(rows) <= 4  # 10/100 of 28 rows, centred
    assert "resized 100x10 to 28x3" in steps[0]


def test_odd_images_are_labelled(exported, boot, tmp_path):
    files = variants(boot, tmp_path)
    result = run_cli("predict", "--json", "--model", str(exported / "model_int8.tflite"),
                     *map(str, files.values()))
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    labelled = {Path(item["image"]).name: item["predictions"][0]["label"] for item in results}
    wrong = {name: label for name, label in labelled.items() if label != "Ankle boot"}
    assert not wrong, wrong
    by_name = {Path(item["image"]).name: item["preprocessing"] for item in results}
    assert any("inverted" in step for step in by_name["white.png"])
    assert any("first of 2 frames" in step for step in by_name["animated.gif"])
    assert any("EXIF" in step for step in by_name["exif.jpg"])
    assert any("16" in step for step in by_name["deep.png"])


def test_predict_text_output_and_top_k(exported, boot, tmp_path):
    path = save(Image.fromarray(255 - boot), tmp_path / "boot.png")
    result = run_cli("predict", str(path), "--top-k", "3", "--model",
                     str(exported / "model_fp32.onnx"))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{path}: Ankle boot (")
    assert first.count("%") == 3
    assert "note: inverted" in result.stdout


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("folder", "is a folder"),
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated or corrupt"),
    ("bomb", "decompression bomb"),
])
def test_bad_images(boot, tmp_path, kind, message):
    path = tmp_path / f"{kind}.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a picture")
    elif kind == "truncated":
        full = io.BytesIO()
        Image.fromarray(boot).resize((200, 200)).save(full, format="PNG")
        path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    elif kind == "bomb":
        # The corpus' bomb (scripts/make_bad_inputs.py): a PNG declaring 40000x40000 pixels.
        path.write_bytes((ROOT / "tests" / "data" / "bad" / "images" / "bomb.png").read_bytes())
    with pytest.raises(errors.ImageError, match=message):
        images.prepare(path, FASHION_MNIST)
