"""Models people bring: Keras Applications families, Sequential models, .h5 files and
SavedModel folders export, verify and predict; their preprocessing is folded into the graph.

The default suite exports two small models (a Sequential .h5 here; MobileNetV3Small at 32x32 in
tests/test_device_install.py, predicted and verified on the TensorFlow-free install);
every family runs under ``-m slow`` through ``scripts/architectures.py``, whose records go to
docs/own-data.md.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, has_module, run_cli

pytestmark = pytest.mark.skipif(not has_module("tensorflow"), reason="needs the train extra")

ARTIFACTS = ("model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite",
             "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")


def architectures():
    spec = importlib.util.spec_from_file_location("architectures", ROOT / "scripts" / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_exported_and_predicted(record: dict) -> None:
    assert record["export_exit"] == 0, record["export_output"]
    assert set(record["artifacts"]) == set(ARTIFACTS)
    assert record["verify_exit"] in (0, 1)  # it ran; parity of a barely trained model may fail
    labels = set(architectures().FASHION_CLASSES)
    assert set(record["predict"].values()) <= labels, record["predict"]
    assert record["predict"]["model_fp32.tflite"] == record["keras_top1"]
    for artifact in ("model_fp32.tflite", "model_fp32.onnx"):
        assert record["artifacts"][artifact]["agreement"] == 1.0, record["artifacts"]


@pytest.mark.slow
@pytest.mark.families
@pytest.mark.parametrize("family", ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                                    "efficientnet_v2_b0", "resnet50", "resnet50_v2",
                                    "densenet121", "vgg16", "convnext_tiny"])
def test_every_family(tmp_path, family):
    assert_exported_and_predicted(architectures().run_family(family, tmp_path, size=32))


def grey_folder(root: Path, size: int = 16, per_class: int = 30) -> Path:
    from edgekit.device import datasets

    test = datasets.load_test()
    for name, label in {"top": 0, "trouser": 1, "bag": 8}.items():
        for number, index in enumerate(np.flatnonzero(test.labels == label)[:per_class]):
            path = root / name / f"{number:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(test.images[index, :, :, 0]).resize((size, size)).save(path)
    return root


def sequential(size: int = 16, scale: bool = True):
    import keras

    keras.utils.set_random_seed(2)
    return keras.Sequential([
        keras.Input((size, size, 1)),
        *([keras.layers.Rescaling(1 / 255)] if scale else []),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])


def test_a_sequential_h5_model_exports_verifies_and_predicts(tmp_path):
    data = grey_folder(tmp_path / "data")
    path = tmp_path / "elsewhere" / "model.h5"
    path.parent.mkdir()
    model = sequential()
    model.save(path)
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(path), "--data", str(data), "--output-dir",
                       str(release), "--calibration-size", "50")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "Traceback" not in exported.stderr
    manifest = json.loads((release / "manifest.json").read_text())
    assert {entry["file"] for entry in manifest["artifacts"]} == set(ARTIFACTS)
    assert (release / "model.keras").is_file()  # the release's reference is .keras, not .h5
    verified = run_cli("verify", str(release), "--data", str(data))
    assert verified.returncode == 0, verified.stdout[-2000:]
    image = data / manifest["dataset"]["files"]["test"]["bag"][0]
    pixels = np.asarray(Image.open(image), np.float32)[None, :, :, None]
    expected = manifest["labels"][int(np.argmax(model(pixels)))]
    answer = run_cli("predict", "--json", str(image), "--model", str(release / "model_fp32.tflite"))
    assert json.loads(answer.stdout)["results"][0]["predictions"][0]["label"] == expected


def test_a_savedmodel_folder_exports(tmp_path):
    data = grey_folder(tmp_path / "data")
    model = sequential()
    saved = tmp_path / "saved"
    model.export(saved)
    release = tmp_path / "release"
    no_range = run_cli("export", "--model", str(saved), "--data", str(data), "--output-dir",
                       str(release))
    assert no_range.returncode == 1 and "--input-range" in no_range.stderr
    assert "does not exist" not in no_range.stderr and not release.exists()
    exported = run_cli("export", "--model", str(saved), "--data", str(data), "--input-range",
                       "0-255", "--output-dir", str(release), "--format", "tflite",
                       "--quantize", "none", "--no-explanations")
    assert exported.returncode == 0, exported.stderr[-3000:]
    from edgekit.device import runtime

    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)
    assert np.allclose(runtime.load(release / "model_fp32.tflite").predict(pixels),
                       model(pixels.astype(np.float32)), atol=1e-5)


@pytest.mark.parametrize("name, content, expected", [
    ("model.onnx", b"\x08\x07", "reads .keras and .h5 files and SavedModel folders"),
    ("broken.h5", b"not hdf5", "cannot load Keras model"),
    ("folder", None, "without saved_model.pb"),
], ids=["other-format", "corrupt-h5", "not-a-savedmodel"])
def test_model_files_edgekit_cannot_read_are_one_error_line(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "weights.bin").write_bytes(b"\0")
    else:
        path.write_bytes(content)
    result = run_cli("export", "--model", str(path), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_error_asking_for_the_input_range_names_the_family(tmp_path):
    """A transfer-learning head on a backbone without its own preprocessing (ResNet50: caffe)."""
    import keras

    data = grey_folder(tmp_path / "data", size=32)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3),
                                           pooling="avg")
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(backbone(inputs))
    path = tmp_path / "transfer.keras"
    keras.Model(inputs, outputs).save(path)
    result = run_cli("export", "--model", str(path), "--data", str(data))
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    assert "resnet" in errors[0] and "--input-range caffe" in errors[0]


@pytest.mark.parametrize("input_range", ["0-1", "-1-1", "caffe", "torch"])
def test_preprocessing_layers_match_keras_preprocess_input(input_range):
    from edgekit.workstation import preprocessing

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    x = pixels
    for layer in preprocessing.preprocessing_layers(input_range, 3):
        x = layer(x)
    np.testing.assert_allclose(np.asarray(x), preprocessing.reference_preprocess(pixels, input_range),
                               rtol=1e-5, atol=1e-4)


def test_imagenet_modes_refuse_grey_input():
    from edgekit import errors
    from edgekit.workstation import preprocessing

    with pytest.raises(errors.ModelError, match="RGB"):
        preprocessing.preprocessing_layers("caffe", 1)


def test_normalization_statistics_stay_constants_in_onnx():
    """tf2onnx turns a Keras 3 Normalization's mean and variance into graph inputs."""
    import keras
    import onnxruntime

    from edgekit.contract import InputContract, Preparation
    from edgekit.workstation.export.onnx import to_onnx

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Normalization(mean=[100.0, 110.0, 120.0], variance=[900.0, 1000.0, 1100.0])(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    contract = InputContract(height=8, width=8, channels=3, labels=("a", "b", "c"),
                             preparation=Preparation(color="rgb"))
    proto = to_onnx(model, 17, contract)
    assert [graph_input.name for graph_input in proto.graph.input] == ["pixels"]
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    np.testing.assert_allclose(session.run(None, {"pixels": pixels})[0], model(pixels), atol=1e-6)


def test_a_failed_conversion_leaves_the_release_as_it_was(tmp_path, monkeypatch):
    """ONNX int8 fails after four TFLite files and the float ONNX were converted."""
    from edgekit import errors
    from edgekit.device import datasets
    from edgekit.workstation import export as export_module
    from edgekit.workstation.config import ExportConfig

    data = grey_folder(tmp_path / "data")
    path = tmp_path / "model.keras"
    sequential().save(path)
    release = tmp_path / "release"
    release.mkdir()
    (release / "notes.txt").write_text("mine\n")

    def fail(*arguments, **options):
        raise errors.ExportError("ONNX int8 quantisation failed: injected")

    monkeypatch.setattr(export_module, "quantize_onnx", fail)
    config = ExportConfig(calibration_size=20, explanations=False)
    with pytest.raises(errors.ExportError, match="injected"):
        export_module.export(path, release, config, spec=datasets.DataSpec(str(data)),
                             echo=lambda line: None)
    assert sorted(item.name for item in release.iterdir()) == ["notes.txt"]


def test_a_conversion_failure_names_the_file_and_what_still_exports():
    from edgekit.workstation.config import ExportFormat, Quantization
    from edgekit.workstation.export import conversion_error

    error = RuntimeError("Traceback\n<unknown>:0: error: 'tfl.gelu' op is not supported in int8\nmore")
    message = str(conversion_error(error, ExportFormat.TFLITE, Quantization.INT8))
    assert "\n" not in message and message.startswith("model_int8.tflite: RuntimeError:")
    assert "'tfl.gelu' op is not supported" in message
    assert "--format onnx" in message and "--quantize none --quantize float16 --quantize dynamic" in message


def test_a_model_of_any_input_size_takes_the_folders_size(tmp_path):
    """Input [None, None, None, 3] (a GAP head): the export fixes the folder's own size."""
    import keras

    data = tmp_path / "data"
    for name, shade in (("dark", 40), ("mid", 128), ("light", 220)):
        for number in range(12):
            path = data / name / f"{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(number).integers(-20, 20, (24, 24, 3))
            Image.fromarray(np.clip(shade + noise, 0, 255).astype(np.uint8)).save(path)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "any_size.keras"
    model.save(path)
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(path), "--data", str(data), "--output-dir",
                       str(release), "--format", "tflite", "--quantize", "none", "--no-explanations")
    assert exported.returncode == 0, exported.stderr[-3000:]
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [None, 24, 24, 3]
    assert manifest["labels"] == ["dark", "light", "mid"]


def test_a_lambda_layer_is_one_error_line_not_code_run(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Lambda(lambda t: t / 255.0)(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(path)
    result = run_cli("export", "--model", str(path), "--output-dir", str(tmp_path / "out"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Lambda layer" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_re_exporting_a_wrapped_release_does_not_wrap_it_twice(tmp_path):
    data = grey_folder(tmp_path / "data")
    path = tmp_path / "unscaled.keras"
    sequential(scale=False).save(path)
    release = tmp_path / "release"
    options = ("--data", str(data), "--input-range", "0-1", "--output-dir", str(release),
               "--format", "tflite", "--quantize", "none", "--no-explanations")
    first = run_cli("export", "--model", str(path), *options)
    assert first.returncode == 0, first.stderr[-2000:]
    from edgekit.device import runtime

    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)
    before = runtime.load(release / "model_fp32.tflite").predict(pixels)
    again = run_cli("export", "--model", str(release / "model.keras"), *options)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((release / "manifest.json").read_text())["reference"]["wrapped"] is False
    np.testing.assert_allclose(runtime.load(release / "model_fp32.tflite").predict(pixels), before,
                               atol=1e-6)


def test_grouped_depthwise_convolutions_and_exact_gelu_convert_to_onnx():
    """ConvNeXt's pieces: a Conv2D with groups == filters (Keras runs it as an XLA function
    tf2onnx cannot convert) and exact GELU (TensorFlow's Erfc, which ONNX lacks)."""
    import keras
    import onnxruntime

    from edgekit.contract import InputContract, Preparation
    from edgekit.workstation.export.onnx import to_onnx

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 1)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Conv2D(6, 3, groups=6, padding="same")(x)
    x = keras.layers.Activation("gelu")(x)  # keras' gelu is the exact one (approximate=False)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(x)))
    contract = InputContract(height=8, width=8, channels=3, labels=("a", "b", "c"),
                             preparation=Preparation(color="rgb"))
    proto = to_onnx(model, 17, contract)
    assert not {node.op_type for node in proto.graph.node} & {"StatefulPartitionedCall", "Erfc"}
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    np.testing.assert_allclose(session.run(None, {"pixels": pixels})[0], model(pixels), atol=1e-6)
