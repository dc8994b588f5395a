"""Rows of picture panels (the input, Grad-CAM over it, occlusion maps) drawn with Pillow.

Device-safe: matplotlib is workstation-only, so the colour maps are a few anchor colours
interpolated here. Grad-CAM maps ([0, 1]) use a blue-to-red heat scale laid over the image;
occlusion maps (signed probability drops) use blue-white-red with one symmetric scale per
row, so the panels of one input compare directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgekit import fileio
from edgekit.device.explain import compare

PANEL = 168  # pixels of picture per panel
PAD = 8
FONT_SIZE = 12
LINE = 16
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
HEAT = np.array([(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0),
                 (128, 0, 0)], dtype=np.float64)
DIVERGING = np.array([(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130),
                      (178, 24, 43)], dtype=np.float64)
OVERLAY_ALPHA = 0.5  # how much of the Grad-CAM colour covers the image
IMAGE_SHOWN = 0.25  # how much of the image shows through an occlusion map


@dataclasses.dataclass(frozen=True)
class Panel:
    """One picture with its title lines. ``kind``: "image", "heat" (values in [0, 1] over
    ``image``) or "signed" (values in [-scale, scale], ``image`` faintly behind)."""

    lines: tuple[str, ...]
    kind: str
    image: np.ndarray  # uint8 [H, W, C]
    values: np.ndarray | None = None  # float [H, W]


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def colours(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB by linear interpolation between ``anchors``."""
    position = np.clip(values, 0.0, 1.0) * (len(anchors) - 1)
    low = np.minimum(position.astype(int), len(anchors) - 2)
    fraction = (position - low)[..., None]
    return anchors[low] * (1 - fraction) + anchors[low + 1] * fraction


LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    """The image in grey as RGB: under a map, its own colours would read as the map's."""
    pixels = image.astype(np.float64)
    grey = pixels if pixels.shape[2] == 1 else (pixels @ LUMINANCE)[..., None]
    return np.repeat(grey, 3, axis=2)


def picture(panel: Panel, scale: float) -> Image.Image:
    """The panel's pixels as an RGB picture of the input's size."""
    base = _grey_rgb(panel.image)
    if panel.kind == "image" or panel.values is None:
        rgb = panel.image.astype(np.float64) if panel.image.shape[2] == 3 else base
    elif panel.kind == "heat":
        rgb = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * colours(panel.values, HEAT)
    else:
        shown = colours(0.5 + 0.5 * panel.values / max(scale, 1e-12), DIVERGING)
        rgb = (1 - IMAGE_SHOWN) * shown + IMAGE_SHOWN * base
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def _sized(image: Image.Image) -> Image.Image:
    """Scale to fit a PANEL square: small inputs by whole pixels (nearest), large smoothly."""
    width, height = image.size
    factor = PANEL / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    method = Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.BILINEAR
    return image.resize(size, method)


def _fitted(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
            width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def row(panels: list[Panel], heading: str) -> Image.Image:
    """One input's panels side by side, under a heading line; occlusion panels share a scale
    (the largest drop in the row, at least the comparison's resolution)."""
    signed = [float(np.abs(p.values).max()) for p in panels
              if p.kind == "signed" and p.values is not None]
    # A flat map stays pale: below the comparison's resolution a drop is noise, not a finding.
    scale = max(signed + [compare.RESOLUTION])
    lines = max(len(p.lines) for p in panels)
    font = _font()
    cell = PANEL + PAD
    top = PAD + LINE + PAD
    canvas = Image.new("RGB", (PAD + cell * len(panels), top + lines * LINE + PANEL + PAD),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if signed:
        heading += f"   (occlusion colours: ±{scale:.2g} drop in probability; red = needed)"
    draw.text((PAD, PAD), _fitted(draw, heading, font, canvas.width - 2 * PAD), fill=TEXT,
              font=font)
    for number, panel in enumerate(panels):
        left = PAD + number * cell
        for line_number, text in enumerate(panel.lines):
            draw.text((left, top + line_number * LINE), _fitted(draw, text, font, PANEL),
                      fill=TEXT, font=font)
        shown = _sized(picture(panel, scale))
        canvas.paste(shown, (left + (PANEL - shown.width) // 2, top + lines * LINE))
    return canvas


def stack(rows: list[Image.Image]) -> Image.Image:
    """Rows one under another (left-aligned, white where a row is narrower)."""
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)),
                       BACKGROUND)
    top = 0
    for picture_row in rows:
        canvas.paste(picture_row, (0, top))
        top += picture_row.height
    return canvas


def save_png(image: Image.Image, target: Path) -> Path:
    """Write atomically (a reader never sees half a PNG)."""
    with fileio.atomic_path(target) as temporary:
        image.save(temporary, format="PNG", optimize=True)
    return Path(target)
