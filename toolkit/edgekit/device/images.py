"""Turn any image file into model input, as the release's input contract says.

One function, :func:`prepare` (or :func:`prepare_bytes` for an upload), makes uint8
``[height, width, channels]`` pixels for training, int8 calibration, verify, predict and the
server alike, so the device sees exactly what training saw. Device-safe (Pillow and numpy).
Each step that changes the picture is recorded, so ``edgekit predict`` can say what it did.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgekit import errors, fileio
from edgekit.contract import InputContract

# Refuse decompression bombs: a small file that decodes to an enormous pixel count.
MAX_PIXELS = 40_000_000
BORDER = 2  # pixels of frame used to judge the background
LIGHT_BACKGROUND = 127.5


RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    path: Path
    pixels: np.ndarray  # uint8 [height, width, channels]
    steps: list[str]


def prepare(path: str | Path, contract: InputContract) -> PreparedImage:
    """An image file as the model's input: checked, decoded, converted and resized."""
    path = Path(path)
    check_file(path)
    image, steps = decode(path, str(path))
    return PreparedImage(path, to_input(image, contract, steps), steps)


def prepare_bytes(data: bytes, name: str, contract: InputContract) -> PreparedImage:
    """The same for an image held in memory (an upload); ``name`` is used in messages."""
    if not data:
        raise errors.ImageError(f"image {name} is empty.")
    image, steps = decode(io.BytesIO(data), name)
    return PreparedImage(Path(name), to_input(image, contract, steps), steps)


def to_input(image: Image.Image, contract: InputContract, steps: list[str]) -> np.ndarray:
    """A decoded image -> uint8 ``[height, width, channels]`` following ``contract``."""
    preparation = contract.preparation
    if preparation.color == "rgb":
        array = to_rgb(image, steps)
    else:
        array = to_grey(image, steps)
        if preparation.invert_light_background:
            array = invert_if_light(array, steps)
    if preparation.crop_margins:
        array = crop_to_content(array, (contract.height, contract.width), steps)
    if preparation.resize == "fit":
        array = fit(array, contract, steps)
    else:
        array = stretch(array, contract, steps)
    return array if array.ndim == 3 else array[:, :, None]


def check_file(path: Path) -> None:
    if path.is_dir():
        raise errors.ImageError(f"{path} is a folder; pass image files (e.g. {path}/*.png).")
    if not path.exists():
        raise errors.ImageError(f"image {path} does not exist{fileio.relative_to_cwd(path)}. "
                                "Check the path.")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise errors.ImageError(f"{path} is not a regular file; pass an image file.")
    if path.stat().st_size == 0:
        raise errors.ImageError(f"image {path} is an empty file.")


def decode(source: Path | io.BytesIO, path: str) -> tuple[Image.Image, list[str]]:
    """Decode with Pillow, refusing decompression bombs; apply the EXIF orientation."""
    steps: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                image: Image.Image = Image.open(source)
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


EXIF_KEYS = frozenset({"exif", "xmp", "XML:com.adobe.xmp"})  # where Pillow looks for orientation


def _orientation(image: Image.Image) -> int | None:
    if image.format == "PNG" and not EXIF_KEYS & image.info.keys():
        return None  # a loaded PNG without an eXIf chunk or XMP has no orientation to read
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
    image = flatten_transparency(image, steps)
    if image.mode != "L":
        steps.append(f"converted {mode} to greyscale")
        image = image.convert("RGB").convert("L") if image.mode not in ("1", "RGB") \
            else image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def flatten_transparency(image: Image.Image, steps: list[str]) -> Image.Image:
    """Palette images expanded; transparency composited onto white (a paper background)."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        steps.append("flattened transparency onto white")
    return image


def to_rgb(image: Image.Image, steps: list[str]) -> np.ndarray:
    """RGB as uint8 ``[h, w, 3]``, whatever the mode; transparency is flattened onto white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = to_grey(image, steps)
        steps.append("converted greyscale to RGB")
        return np.repeat(grey[:, :, None], 3, axis=2)
    image = flatten_transparency(image, steps)
    if image.mode != "RGB":
        steps.append(f"converted {mode} to RGB")
        image = image.convert("RGB")
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


def crop_to_content(grey: np.ndarray, size: tuple[int, int], steps: list[str]) -> np.ndarray:
    """Trim empty margins, as Fashion-MNIST's own conversion did before resizing.

    Content is any pixel brighter than a tenth of the brightest; images already at the
    model's ``size`` (the dataset's own form) and images without content are left alone.
    """
    if grey.shape[:2] == size or grey.max(initial=0) == 0:
        return grey
    brightness = grey if grey.ndim == 2 else grey.max(axis=2)
    rows = np.flatnonzero(brightness.max(axis=1) > brightness.max() / 10)
    columns = np.flatnonzero(brightness.max(axis=0) > brightness.max() / 10)
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    if (bottom - top, right - left) == grey.shape[:2]:
        return grey
    steps.append(f"cropped empty margins: {grey.shape[1]}x{grey.shape[0]} to "
                 f"{right - left}x{bottom - top}")
    return grey[top:bottom, left:right]


def fit(array: np.ndarray, contract: InputContract, steps: list[str]) -> np.ndarray:
    """Fit into the model's size keeping the aspect ratio, centred on the background."""
    height, width = array.shape[:2]
    target_height, target_width = contract.height, contract.width
    if (height, width) == (target_height, target_width):
        return array
    scale = min(target_height / height, target_width / width)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    resized = Image.fromarray(array).resize((new_width, new_height),
                                            RESAMPLE[contract.preparation.resample])
    canvas = np.full((target_height, target_width, *array.shape[2:]), contract.background,
                     dtype=np.uint8)
    top = (target_height - new_height) // 2
    left = (target_width - new_width) // 2
    canvas[top:top + new_height, left:left + new_width] = np.asarray(resized, dtype=np.uint8)
    steps.append(f"resized {width}x{height} to {new_width}x{new_height}, padded to "
                 f"{target_width}x{target_height}")
    return canvas


def stretch(array: np.ndarray, contract: InputContract, steps: list[str]) -> np.ndarray:
    """Resize to exactly the model's size (the aspect ratio may change), as Keras does."""
    height, width = array.shape[:2]
    if (height, width) == (contract.height, contract.width):
        return array
    resized = Image.fromarray(array).resize((contract.width, contract.height),
                                            RESAMPLE[contract.preparation.resample])
    steps.append(f"resized {width}x{height} to {contract.width}x{contract.height} "
                 f"({contract.preparation.resample})")
    return np.asarray(resized, dtype=np.uint8)
