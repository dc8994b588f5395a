"""Property-based tests (hypothesis): input checks and image decoding never misbehave."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from edgekit import errors
from edgekit.contract import FASHION_MNIST
from edgekit.device import images, runtime

# derandomize: CI on a fresh clone explores the same examples every run (no flaky red).
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(hnp.arrays(dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=30)))
def test_check_pixels_accepts_or_raises_value_error(array):
    try:
        checked = runtime.check_pixels(array, FASHION_MNIST.shape)
    except ValueError:
        return
    assert checked.dtype == np.uint8
    assert checked.ndim == 4 and checked.shape[1:] == (28, 28, 1) and checked.shape[0] >= 1


@FAST
@given(hnp.arrays(np.float32, (2, 28, 28, 1),
                  elements=st.floats(0, 255, width=32, allow_nan=False)))
def test_in_range_floats_round_to_the_same_pixels(array):
    checked = runtime.check_pixels(array, FASHION_MNIST.shape)
    assert np.array_equal(checked, np.rint(array).astype(np.uint8))


@FAST
@given(width=st.integers(1, 300), height=st.integers(1, 300),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1"]),
       file_format=st.sampled_from(["PNG", "BMP", "GIF", "JPEG", "TIFF"]),
       seed=st.integers(0, 2**32 - 1))
def test_any_decodable_image_becomes_model_input(width, height, mode, file_format, seed, tmp_path_factory):
    if file_format == "JPEG" and mode not in ("L", "RGB"):
        return
    if file_format in ("GIF", "BMP") and mode == "I;16":  # Pillow cannot write these
        return
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        picture = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path_factory.mktemp("img") / f"x.{file_format.lower()}"
    picture.save(path, format=file_format)
    prepared = images.prepare(path, FASHION_MNIST)
    assert prepared.pixels.shape == (28, 28, 1) and prepared.pixels.dtype == np.uint8


@FAST
@given(data=st.binary(min_size=1, max_size=2000))
def test_random_bytes_are_an_image_error_or_an_image(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "blob.png"
    path.write_bytes(data)
    try:
        prepared = images.prepare(path, FASHION_MNIST)
    except errors.ImageError:
        return
    assert prepared.pixels.shape == (28, 28, 1)


@FAST
@given(cut=st.integers(0, 10_000))
def test_truncated_png_is_an_error_never_garbage(cut, tmp_path_factory):
    """A cut file either fails with ImageError or, if every pixel survived (only trailing
    chunks lost), decodes to exactly the original."""
    buffer = io.BytesIO()
    original = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(original).save(buffer, format="PNG")
    data = buffer.getvalue()
    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.png"
    whole.write_bytes(data)
    path = folder / "cut.png"
    path.write_bytes(data[: cut % len(data)])
    try:
        prepared = images.prepare(path, FASHION_MNIST)
    except errors.ImageError:
        return
    assert np.array_equal(prepared.pixels, images.prepare(whole, FASHION_MNIST).pixels)
