"""edgekit.device.runtime on the committed artifacts: one predict() for every format."""

import numpy as np
import pytest

from conftest import ARTIFACTS
from edgekit import errors
from edgekit.contract import FASHION_MNIST
from edgekit.contract import FASHION_MNIST_LABELS as LABELS
from edgekit.device import runtime


@pytest.fixture(scope="module")
def images(test_split):
    return test_split.images[:64], test_split.labels[:64]


@pytest.mark.parametrize("name", ARTIFACTS, ids=ARTIFACTS)
def test_predict_contract(exported, images, name):
    pixels, labels = images
    model = runtime.load(exported / name)
    probabilities = model.predict(pixels)
    assert probabilities.shape == (64, 10)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0) and np.all(probabilities <= 1.0 + 1e-6)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=0.02)
    assert LABELS[int(probabilities[0].argmax())] == "Ankle boot"
    # 64 images measure accuracy to +/-4 pp: the sample's bar is loose; agreement with the
    # Keras model's stored outputs on the same images is the tight check.
    assert (probabilities.argmax(axis=1) == labels).mean() > 0.8
    stored = np.load(exported / "reference.npz")["probabilities"][:64]
    assert (probabilities.argmax(axis=1) == stored.argmax(axis=1)).mean() >= 62 / 64
    assert model.labels == LABELS


@pytest.mark.parametrize("name", ARTIFACTS, ids=ARTIFACTS)
def test_batching_does_not_change_results(exported, images, name):
    pixels, _ = images
    model = runtime.load(exported / name, threads=1)
    whole = model.predict(pixels, batch_size=64)
    pieces = model.predict(pixels, batch_size=7)
    single = np.concatenate([model.predict(pixels[i]) for i in range(5)])
    assert np.allclose(whole, pieces, atol=1e-6)
    assert np.allclose(whole[:5], single, atol=1e-6)


def test_int8_tflite_tensors_are_integer(exported):
    model = runtime.load(exported / "model_int8.tflite")
    assert model.input.dtype == "int8" and model.output.dtype == "int8"
    # Raw pixels 0..255 map exactly onto int8 -128..127 when scale is 1 and zero point -128.
    assert model.input.scale == pytest.approx(1.0)
    assert model.input.zero_point == -128
    assert model.output.scale == pytest.approx(1 / 256)


def test_quantize_round_trip():
    info = runtime.TensorInfo("x", "int8", [None, 28, 28, 1], scale=1.0, zero_point=-128)
    pixels = np.arange(256, dtype=np.uint8)
    quantized = runtime.quantize(pixels, info)
    assert quantized.dtype == np.int8
    assert quantized.min() == -128 and quantized.max() == 127
    assert np.array_equal(runtime.dequantize(quantized, info), pixels.astype(np.float32))
    # The bit-flip fast path equals the general arithmetic.
    general = np.clip(np.rint(pixels.astype(np.float32)) - 128, -128, 127).astype(np.int8)
    assert np.array_equal(quantized, general)
    identity = runtime.TensorInfo("x", "uint8", [None, 28, 28, 1], scale=1.0, zero_point=0)
    assert np.array_equal(runtime.quantize(pixels, identity), pixels)
    coarse = runtime.TensorInfo("x", "uint8", [None, 28, 28, 1], scale=2.0, zero_point=10)
    assert runtime.quantize(np.array([0.0, 4.0, 1000.0]), coarse).tolist() == [10, 12, 255]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 28, 28, 3), np.uint8), "shape"),
    (np.zeros((2, 32, 32, 1), np.uint8), "shape"),
    (np.zeros((0, 28, 28, 1), np.uint8), "no images"),
    (np.full((1, 28, 28, 1), np.nan, np.float32), "NaN"),
    (np.full((1, 28, 28, 1), np.inf, np.float32), "NaN or infinity"),
    (np.full((1, 28, 28, 1), 300.0), "0..255"),
    (np.full((1, 28, 28, 1), -1, np.int16), "0..255"),
    (np.zeros((1, 28, 28, 1), bool), "dtype"),
    (np.array([["a"] * 28] * 28), "dtype"),
], ids=["rgb", "size", "empty", "nan", "inf", "too-bright", "negative", "bool", "strings"])
def test_bad_pixels_raise_value_error(exported, bad, message):
    model = runtime.load(exported / "model_fp32.onnx")
    with pytest.raises(ValueError, match=message):
        model.predict(bad)


def test_float_pixels_in_range_are_accepted(exported, images):
    pixels, _ = images
    model = runtime.load(exported / "model_fp32.onnx")
    assert np.allclose(model.predict(pixels.astype(np.float64)), model.predict(pixels))


def test_tampered_file_is_refused(exported_copy):
    path = exported_copy / "model_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(errors.ModelError, match="does not match its manifest"):
        runtime.load(path)
    # Told not to check, it loads (the flipped byte sits in a weight).
    runtime.load(path, verify_sha256=False)


def test_wrong_format_names_are_refused(exported_copy):
    onnx_as_tflite = exported_copy / "copy.tflite"
    onnx_as_tflite.write_bytes((exported_copy / "model_fp32.onnx").read_bytes())
    with pytest.raises(errors.ModelError, match="not a TFLite flatbuffer"):
        runtime.load(onnx_as_tflite)
    tflite_as_onnx = exported_copy / "copy.onnx"
    tflite_as_onnx.write_bytes((exported_copy / "model_fp32.tflite").read_bytes())
    with pytest.raises(errors.ModelError, match="TFLite flatbuffer named .onnx"):
        runtime.load(tflite_as_onnx)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, bytes(range(256)) * 40],
                         ids=["empty", "zeros", "random"])
@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_broken_model_files(tmp_path, content, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(content)
    with pytest.raises(errors.ModelError):
        runtime.load(path)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(errors.ModelError, match="does not exist. Check the path"):
        runtime.load(tmp_path / "absent.onnx")
    # A relative path names the folder it was resolved in: the usual mistake is the wrong cwd.
    with pytest.raises(errors.ModelError, match=r"relative to .*edgekit export"):
        runtime.load("no-such-folder/absent.tflite")
    with pytest.raises(errors.ModelError, match="is a folder"):
        runtime.load(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(errors.ModelError, match="unknown model format"):
        runtime.load(tmp_path / "model.pt")


def test_onnx_checker_where_installed(tmp_path):
    pytest.importorskip("onnx")
    from conftest import ROOT
    from edgekit.workstation import onnx_check

    broken = tmp_path / "five-classes.onnx"
    broken.write_bytes((ROOT / "tests" / "data" / "bad" / "models" / "truncated.onnx").read_bytes())
    with pytest.raises(errors.ModelError, match="onnx.checker"):
        onnx_check.check_onnx_graph(broken)
    onnx_check.check_onnx_graph(ROOT / "exported" / "model_int8.onnx")  # a good file passes


def test_dequantize_is_float32_and_exact():
    info = runtime.TensorInfo("p", "int8", [None, 10], scale=1 / 256, zero_point=-128)
    values = np.array([[-128, 0, 127]], dtype=np.int8)
    result = runtime.dequantize(values, info)
    assert result.dtype == np.float32
    assert result.tolist() == [[0.0, 0.5, 255 / 256]]
    floats = np.array([[0.25]], dtype=np.float32)
    assert runtime.dequantize(floats, runtime.TensorInfo("p", "float32", [None, 1])) is floats


def test_uint8_pixels_pass_the_check_unchanged():
    pixels = np.zeros((2, 28, 28, 1), np.uint8)
    assert runtime.check_pixels(pixels, (28, 28, 1)) is pixels  # the single-image path does no work
    with pytest.raises(ValueError, match="no images"):
        runtime.check_pixels(np.zeros((0, 28, 28, 1), np.uint8), (28, 28, 1))
    with pytest.raises(ValueError, match="shape"):
        runtime.check_pixels(np.zeros((2, 28, 28, 3), np.uint8), (28, 28, 1))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -0.5])
def test_a_damaged_quantisation_scale_is_refused(tmp_path, scale):
    model = runtime.LoadedModel(tmp_path / "model.tflite", None, FASHION_MNIST)
    model.input = runtime.TensorInfo("pixels", "int8", [1, 28, 28, 1], scale=1.0, zero_point=-128)
    model.output = runtime.TensorInfo("probabilities", "int8", [1, 10], scale=scale, zero_point=-128)
    with pytest.raises(errors.ModelError, match="not a positive number"):
        model._check_tensors()
