"""Fine-tuning Keras Applications backbones: registry, in-graph preprocessing, weights, phases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_tensorflow, run_cli
from edgekit.cli import main as cli_main
from edgekit.contract import FASHION_MNIST, InputContract, default_preparation, placeholder_labels
from edgekit.workstation.backbones import registry
from edgekit.workstation.config import Architecture, TrainConfig

pytestmark = requires_tensorflow


def test_registry_is_the_architecture_list():
    import keras

    assert {a.value for a in Architecture if a.is_backbone} == set(registry.FAMILIES)
    assert set(registry.ARCHITECTURES) == {a.value for a in Architecture}
    for family in registry.FAMILIES.values():
        assert callable(getattr(keras.applications, family.constructor)), family.name
        assert family.preprocessing in registry.MODES
        assert family.default_size >= family.min_size >= 32


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
def test_preprocessing_layer_equals_keras_preprocess_input(mode, channels):
    from keras.applications import imagenet_utils

    from edgekit.workstation.backbones import preprocessing

    pixels = np.random.default_rng(0).integers(0, 256, (4, 7, 5, channels)).astype(np.float32)
    pixels[0, 0, 0] = 0.0
    pixels[0, 0, 1] = 255.0
    rgb = np.repeat(pixels, 3, axis=-1) if channels == 1 else pixels
    expected = imagenet_utils.preprocess_input(rgb.copy(), mode=mode)
    layer = preprocessing.layer(mode, channels)
    assert layer is not None and not layer.trainable
    np.testing.assert_allclose(np.asarray(layer(pixels)), expected, rtol=0, atol=2e-6)


def test_preprocessing_none_repeats_grey_and_leaves_rgb_alone():
    from edgekit.workstation.backbones import preprocessing

    grey = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)[..., :1] * 20
    np.testing.assert_array_equal(np.asarray(preprocessing.layer("none", 1)(grey)),
                                  np.repeat(grey, 3, axis=-1))
    assert preprocessing.layer("none", 3) is None
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        preprocessing.affine("inception", 3)


def test_backbone_recipe_and_config_checks():
    config = TrainConfig.for_architecture("mobilenet_v3_small")
    assert (config.weights, config.head_epochs, config.epochs) == ("imagenet", 5, 10)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.for_architecture("resnet50", epochs=6).head_epochs == 3
    with pytest.raises(ValueError, match="head epochs"):
        TrainConfig.for_architecture("resnet50", epochs=2, head_epochs=3)
    with pytest.raises(ValueError, match="backbones"):
        TrainConfig.for_architecture("edge", weights="imagenet")
    with pytest.raises(ValueError, match="moving average"):
        TrainConfig.for_architecture("vgg16", ema_decay=0.99)


def small_config(**fields) -> TrainConfig:
    return TrainConfig.for_architecture("mobilenet_v3_small", **{
        "weights": "none", "epochs": 2, "head_epochs": 1, **fields})


def test_model_takes_raw_pixels_upscales_in_graph_and_freezes_by_phase(tmp_path):
    import keras

    from edgekit.workstation import models
    from edgekit.workstation.backbones import finetune

    model = models.build(small_config(), FASHION_MNIST)
    assert tuple(model.inputs[0].shape[1:]) == (28, 28, 1)
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)
    assert model.get_layer("probabilities").activation.__name__ == "softmax"
    head_only = {variable.path for variable in model.trainable_variables}
    assert head_only == {"probabilities/kernel", "probabilities/bias"}
    family = registry.family("mobilenet_v3_small")
    trained = finetune.set_phase(model, family, "fine-tune")
    assert trained and all(name.startswith(("expanded_conv_9", "expanded_conv_10", "conv_1"))
                           for name in trained)
    assert not any(layer.trainable for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization))
    assert not model.get_layer("preprocess").trainable  # grey -> RGB, fixed
    pixels = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(pixels)), np.asarray(model(pixels)), atol=1e-6)


def _saved_backbone_weights(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A weights=None MobileNetV3Small's weights, its first convolution set to a known pattern."""
    import keras

    backbone = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                                   weights=None)
    kernel = backbone.get_layer("conv").kernel
    pattern = np.linspace(-1, 1, int(np.prod(kernel.shape)), dtype=np.float32).reshape(kernel.shape)
    kernel.assign(pattern)
    path = tmp_path / "mobilenet_v3_small.weights.h5"
    backbone.save_weights(path)
    return path, pattern


def test_weights_path_loads_the_files_tensors(tmp_path):
    from edgekit.workstation import models

    path, pattern = _saved_backbone_weights(tmp_path)
    model = models.build(small_config(weights=str(path)), FASHION_MNIST)
    np.testing.assert_array_equal(np.asarray(model.get_layer("conv").kernel), pattern)
    random_init = models.build(small_config(), FASHION_MNIST)
    assert not np.array_equal(np.asarray(random_init.get_layer("conv").kernel), pattern)


def test_weights_of_another_family_is_one_error(tmp_path):
    from edgekit import errors
    from edgekit.workstation import models

    path, _ = _saved_backbone_weights(tmp_path)
    config = TrainConfig.for_architecture("mobilenet_v2", weights=str(path), epochs=2)
    with pytest.raises(errors.ModelError, match="does not fit mobilenet_v2"):
        models.build(config, FASHION_MNIST)


def test_bad_weights_path_is_one_error_line(runner, tmp_path):
    result = runner.invoke(cli_main, ["train", "--arch", "mobilenet_v3_small", "--weights",
                                      str(tmp_path / "missing.weights.h5"), "--output-dir",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --weights ") and "no such file" in lines[0]
    assert not (tmp_path / "run").exists()


def test_unknown_family_is_a_bad_parameter(runner):
    for command in ("train", "tune"):
        result = runner.invoke(cli_main, [command, "--arch", "mobilenet_v9"])
        assert result.exit_code == 2
        assert "Invalid value for '--arch'" in result.output


def test_fine_tune_epochs_must_add_up(runner):
    result = runner.invoke(cli_main, ["train", "--arch", "resnet50", "--epochs", "5",
                                      "--head-epochs", "2", "--fine-tune-epochs", "2"])
    assert result.exit_code == 2 and "is not --head-epochs 2 + --fine-tune-epochs 2" in result.output


def test_imagenet_download_failure_is_one_error(monkeypatch):
    import keras

    from edgekit import errors
    from edgekit.workstation import models

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    config = TrainConfig.for_architecture("mobilenet_v3_small", epochs=2)
    with pytest.raises(errors.ModelError, match="--weights PATH .* or --weights none"):
        models.build(config, FASHION_MNIST)


RGB32 = InputContract(height=32, width=32, channels=3, labels=placeholder_labels(4),
                      preparation=default_preparation(3))


def fake_imagenet_download(monkeypatch, tmp_path: Path, family: registry.Family) -> None:
    """Keras' ImageNet download, answered offline with a weights file of the family (default
    constructor arguments, random weights; a Normalization gets ImageNet-like statistics)."""
    import keras

    constructor = getattr(keras.applications, family.constructor)
    model = constructor(input_shape=(32, 32, 3), include_top=False, weights=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and layer.weights:
            layer.adapt_mean.assign(np.asarray([0.485, 0.456, 0.406], np.float32))
            layer.adapt_variance.assign(np.asarray([0.229, 0.224, 0.225], np.float32) ** 2)
    path = tmp_path / f"{family.name}-imagenet.weights.h5"
    model.save_weights(path)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *args, **kwargs: str(path))


def assert_features_equal_keras_own_model(name: str, monkeypatch, tmp_path: Path) -> None:
    """The fine-tuning model's pooled features of raw pixels equal Keras' own ImageNet model's
    of ``keras.applications.<module>.preprocess_input(pixels)`` (Keras' default arguments)."""
    import keras

    from edgekit.workstation import models

    family = registry.family(name)
    fake_imagenet_download(monkeypatch, tmp_path, family)
    config = TrainConfig.for_architecture(name, weights="imagenet", epochs=2)
    model = models.build(config, RGB32)
    features = keras.Model(model.inputs, model.get_layer("pooling").output)
    keras_own = getattr(keras.applications, family.constructor)(
        input_shape=(32, 32, 3), include_top=False, weights="imagenet", pooling="avg")
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    preprocess = getattr(keras.applications, family.module).preprocess_input
    expected = np.asarray(keras_own(preprocess(pixels.copy())))
    got = np.asarray(features(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_imagenet_weights_and_preprocessing_match_keras(name, monkeypatch, tmp_path):
    assert_features_equal_keras_own_model(name, monkeypatch, tmp_path)


@pytest.mark.slow
@pytest.mark.families
@pytest.mark.parametrize("name", [name for name in registry.FAMILIES
                                  if name not in ("mobilenet_v3_small", "efficientnet_b0")])
def test_every_family_matches_keras_with_imagenet_weights(name, monkeypatch, tmp_path):
    assert_features_equal_keras_own_model(name, monkeypatch, tmp_path)


@pytest.mark.slow
def test_fine_tune_export_verify_evaluate(tmp_path):
    """mobilenet_v3_small, --weights none, 1+1 epochs on a Fashion-MNIST slice, then the
    release pipeline: export and verify run; parity may fail on an untrained model, export
    must not. The export is the int8 pair (TFLite, and ONNX through the float ONNX graph): the
    in-graph grey-to-RGB and resize layers through both converters and int8 calibration. All
    six files of a MobileNetV3Small are made, predicted and verified in
    tests/test_device_install.py::test_a_keras_applications_release_predicts_on_the_device."""
    run = tmp_path / "run"
    trained = run_cli("train", "--arch", "mobilenet_v3_small", "--weights", "none",
                      "--head-epochs", "1", "--fine-tune-epochs", "1", "--limit", "200",
                      "--output-dir", str(run))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "fine-tuning" in trained.stdout
    record = json.loads((run / "train_config.json").read_text())
    assert [phase["phase"] for phase in record["backbone"]["phases"]] == ["head", "fine-tune"]
    assert record["backbone"]["input_size"] == [32, 32]
    rates = [epoch["learning_rate"] for epoch in json.loads((run / "history.json").read_text())["epochs"]]
    assert rates == pytest.approx([1e-3, 1e-4])
    evaluated = run_cli("evaluate", "--model", str(run / "model.keras"), "--output-dir",
                        str(tmp_path / "evaluation"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(run / "model.keras"), "--output-dir", str(release),
                       "--quantize", "int8", "--calibration-size", "50", "--no-explanations")
    assert exported.returncode == 0, exported.stderr[-2000:]
    manifest = json.loads((release / "manifest.json").read_text())
    assert sorted(entry["file"] for entry in manifest["artifacts"]) == [
        "model_int8.onnx", "model_int8.tflite"]
    verified = run_cli("verify", str(release), "--golden")  # the stored 300 test images
    assert verified.returncode in (0, 1), verified.stderr[-2000:]
    assert "Traceback" not in verified.stderr


@pytest.mark.slow
@pytest.mark.families
@pytest.mark.parametrize("name", list(registry.FAMILIES))
def test_every_family_builds_and_takes_a_training_step(name, tmp_path):
    """Each family: build at its default size from a Fashion-MNIST-shaped input, one step of
    each phase, save and reload; the seconds are printed (docs/own-data.md's table)."""
    import keras

    from edgekit.workstation import models, training
    from edgekit.workstation.backbones import finetune

    config = TrainConfig.for_architecture(name, weights="none", epochs=2, head_epochs=1,
                                          batch_size=8)
    started = time.perf_counter()
    model = models.build(config, FASHION_MNIST)
    built = time.perf_counter() - started
    pixels = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype(np.float32)
    targets = np.eye(10, dtype=np.float32)[np.arange(8) % 10]
    training.compile_model(model, config, 1)
    model.train_on_batch(pixels, targets)
    trained = finetune.set_phase(model, registry.family(name), "fine-tune")
    assert trained, f"{name}: no top-block layer trained"
    training.compile_model(model, config, 1)
    model.train_on_batch(pixels, targets)
    stepped = time.perf_counter() - started - built
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(loaded(pixels)), np.asarray(model(pixels)), atol=1e-4)
    print(f"\n{name}: {model.count_params():,} parameters, built in {built:.1f} s, "
          f"two training steps in {stepped:.1f} s, {len(trained)} top-block layers")
