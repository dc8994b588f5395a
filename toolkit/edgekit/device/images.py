"""Turn any image file into model input: uint8 ``[28, 28, 1]``, light garment on black.

Device-safe (Pillow and numpy). Each step that changes the picture is recorded, so
``edgekit predict`` can say what it did.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgekit import errors, fileio
from edgekit.contract import IMAGE_SIZE

# Refuse decompression bombs: a small file that decodes to an enormous pixel count.
MAX_PIXELS = 40_000_000
BORDER = 2  # pixels of frame used to judge the background
LIGHT_BACKGROUND = 127.5


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    path: Path
    pixels: np.ndarray  # uint8 [28, 28, 1]
    steps: list[str]


def prepare(path: str | Path) -> PreparedImage:
    path = Path(path)
    image, steps = open_image(path)
    grey = to_grey(image, steps)
    grey = invert_if_light(grey, steps)
    grey = crop_to_content(grey, steps)
    fitted = fit(grey, steps)
    return PreparedImage(path, fitted[:, :, None], steps)


def open_image(path: Path) -> tuple[Image.Image, list[str]]:
    if path.is_dir():
        raise errors.ImageError(f"{path} is a folder; pass image files (e.g. {path}/*.png).")
    if not path.exists():
        raise errors.ImageError(f"image {path} does not exist{fileio.relative_to_cwd(path)}. "
                                "Check the path.")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise errors.ImageError(f"{path} is not a regular file; pass an image file.")
    if path.stat().st_size == 0:
        raise errors.ImageError(f"image {path} is an empty file.")
    steps: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                image: Image.Image = Image.open(path)
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    image.seek(0)
                    steps.append(f"used the first of {frames} frames")
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise errors.ImageError(
            f"image {path} decodes to more than {MAX_PIXELS:,} pixels; refusing a possible "
            "decompression bomb. Resize it first."
        ) from error
    except UnidentifiedImageError as error:
        raise errors.ImageError(
            f"{path} is not an image Pillow can read (PNG, JPEG, BMP, GIF, ...)."
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise errors.ImageError(f"image {path} is truncated or corrupt: {error}.") from error
    orientation = _orientation(image)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        steps.append(f"applied the EXIF orientation ({orientation})")
    return image, steps


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block is not worth failing over
        return None


def to_grey(image: Image.Image, steps: list[str]) -> np.ndarray:
    """Greyscale as uint8, whatever the mode (16-bit, float, palette, CMYK, alpha)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max(initial=0))
        if mode.startswith("I;16"):
            high = 65535.0
        elif mode == "F" and top <= 1.0:
            high = 1.0  # the usual range of float images
        else:
            high = next(limit for limit in (255.0, 65535.0, max(top, 1.0)) if top <= limit)
        steps.append(f"scaled {mode} pixels (0..{high:g}) to 8 bits")
        return np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        steps.append("flattened transparency onto white")
    if image.mode != "L":
        steps.append(f"converted {mode} to greyscale")
        image = image.convert("RGB").convert("L") if image.mode not in ("1", "RGB") \
            else image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def invert_if_light(grey: np.ndarray, steps: list[str]) -> np.ndarray:
    """Fashion-MNIST garments are light on black; invert pictures with a light background."""
    height, width = grey.shape
    frame = BORDER if min(height, width) > 2 * BORDER else 0
    if frame:
        border = np.concatenate([grey[:frame].ravel(), grey[-frame:].ravel(),
                                 grey[:, :frame].ravel(), grey[:, -frame:].ravel()])
    else:
        border = grey.ravel()
    mean = float(border.mean())
    if mean > LIGHT_BACKGROUND:
        steps.append(f"inverted: light background (border mean {mean:.0f}/255) made dark "
                     "like Fashion-MNIST")
        return 255 - grey
    return grey


def crop_to_content(grey: np.ndarray, steps: list[str]) -> np.ndarray:
    """Trim empty margins, as Fashion-MNIST's own conversion did before resizing.

    Content is any pixel brighter than a tenth of the brightest; 28x28 images (already in
    the dataset's form) and images without content are left alone.
    """
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE) or grey.max(initial=0) == 0:
        return grey
    rows = np.flatnonzero(grey.max(axis=1) > grey.max() / 10)
    columns = np.flatnonzero(grey.max(axis=0) > grey.max() / 10)
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    if (bottom - top, right - left) == grey.shape:
        return grey
    steps.append(f"cropped empty margins: {grey.shape[1]}x{grey.shape[0]} to "
                 f"{right - left}x{bottom - top}")
    return grey[top:bottom, left:right]


def fit(grey: np.ndarray, steps: list[str]) -> np.ndarray:
    """Fit into 28x28 keeping the aspect ratio, centred on black."""
    height, width = grey.shape
    if (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        return grey
    scale = IMAGE_SIZE / max(height, width)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    resized = Image.fromarray(grey).resize((new_width, new_height), Image.Resampling.LANCZOS)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    top = (IMAGE_SIZE - new_height) // 2
    left = (IMAGE_SIZE - new_width) // 2
    canvas[top:top + new_height, left:left + new_width] = np.asarray(resized, dtype=np.uint8)
    steps.append(f"resized {width}x{height} to {new_width}x{new_height}, padded to "
                 f"{IMAGE_SIZE}x{IMAGE_SIZE}")
    return canvas
