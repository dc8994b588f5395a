"""Your own images and your own Keras model, end to end: train -> export -> verify -> predict.

Two contracts unlike Fashion-MNIST's, on real images in folder form: scikit-learn's bundled
digits as grey PNG folders (8x8, upscaled to 16x16 by the contract), and Fashion-MNIST garments
tinted and written as 32x32 RGB JPEGs with no split folders and class names with spaces and
accents. Plus a Keras model built here (48x48x3, logits, no scaling layer) exported and verified
on a folder dataset.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import has_module, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not has_module("tensorflow"), reason="needs the train extra")]

ARTIFACTS = ["model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite",
             "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx"]
# Own data has small test splits: the bars' intervals decide (a warning is not a failure).
TINT_LABELS = ["Tee-shirt été", "Pantalon", "Sac à main", "Bottine"]


def digits_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = root / f"digit {target}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image * 255 / 16).astype(np.uint8), mode="L").save(path)
    return root


def tinted_folder(root: Path, test_split, per_class: int = 150) -> Path:
    """Fashion-MNIST test garments of four classes, tinted per image, as 32x32 RGB JPEGs."""
    rng = np.random.default_rng(3)
    for label, fashion_class in zip(TINT_LABELS, (0, 1, 8, 9), strict=True):
        members = np.flatnonzero(test_split.labels == fashion_class)[:per_class]
        for number, index in enumerate(members):
            grey = test_split.images[index, :, :, 0].astype(np.float32) / 255
            tint = rng.uniform(0.4, 1.0, 3)
            background = rng.uniform(0, 60, 3)
            rgb = np.clip(grey[:, :, None] * tint * 255 + (1 - grey[:, :, None]) * background,
                          0, 255).astype(np.uint8)
            path = root / label / f"{number:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).resize((32, 32), Image.Resampling.BILINEAR).save(path, quality=92)
    return root


def train_export_verify(data: Path, run: Path, *train_options: str) -> dict:
    trained = run_cli("train", "--data", str(data), "--output-dir", str(run), *train_options)
    assert trained.returncode == 0, trained.stderr[-3000:]
    exported = run_cli("export", "--model", str(run / "model.keras"), "--format", "all",
                       "--calibration-size", "200")
    assert exported.returncode == 0, exported.stderr[-3000:]
    verified = run_cli("verify", str(run))
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    return json.loads((run / "manifest.json").read_text())


def predicted_label(model: Path, image: Path) -> str:
    result = run_cli("predict", "--json", str(image), "--model", str(model))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["results"][0]["predictions"][0]["label"]


def test_digits_as_grey_png_folders(digits_release):
    data, run = digits_release  # trained, exported and verified by train_export_verify
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["labels"] == [f"digit {n}" for n in range(10)]
    assert manifest["input"]["shape"] == [None, 16, 16, 1]
    assert manifest["dataset"]["kind"] == "folder"
    test_files = [f for name in manifest["labels"]
                  for f in manifest["dataset"]["files"]["test"][name]]
    assert len(test_files) == 179  # round(10 %) of each class, recorded
    for entry in manifest["artifacts"]:
        metrics = entry["metrics"]
        assert metrics["images"] == 179 and metrics["accuracy"] > 0.8, entry
    image = data / test_files[0]
    assert predicted_label(run / "model_int8.tflite", image) in manifest["labels"]


def test_tinted_rgb_jpegs_without_split_folders(tmp_path, test_split):
    data = tinted_folder(tmp_path / "vêtements", test_split)
    run = tmp_path / "run"
    manifest = train_export_verify(data, run, "--epochs", "6")
    assert manifest["labels"] == sorted(TINT_LABELS)
    assert manifest["input"]["shape"] == [None, 32, 32, 3]
    assert manifest["input"]["preparation"]["color"] == "rgb"
    assert {entry["file"] for entry in manifest["artifacts"]} == set(ARTIFACTS)
    int8 = next(e for e in manifest["artifacts"] if e["file"] == "model_int8.tflite")
    assert int8["metrics"]["accuracy"] > 0.7
    # A new photo, larger and as PNG: prepared by the contract (stretched to 32x32 RGB).
    garment = np.asarray(Image.open(next((data / "Bottine").iterdir())).convert("RGB"))
    photo = tmp_path / "bottine photo.png"
    Image.fromarray(garment).resize((96, 96)).save(photo)
    assert predicted_label(run / "model_int8.onnx", photo) in TINT_LABELS


def test_bring_your_own_keras_model(tmp_path, test_split):
    """A classifier trained elsewhere: 48x48x3, expects 0..1 input, ends in logits."""
    import keras

    data = tinted_folder(tmp_path / "mine", test_split, per_class=60)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4)(x)  # logits
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    from edgekit.device import datasets

    prepared = datasets.open_dataset(data, size=(48, 48))
    model.fit(prepared.train.images / 255.0, prepared.train.labels, epochs=3, verbose=0)
    path = tmp_path / "elsewhere" / "mine.keras"
    path.parent.mkdir()
    model.save(path)

    missing_range = run_cli("export", "--model", str(path), "--data", str(data))
    assert missing_range.returncode == 1 and "--input-range" in missing_range.stderr
    assert "Traceback" not in missing_range.stderr
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(path), "--data", str(data), "--input-range", "0-1",
                       "--output-dir", str(release), "--calibration-size", "100")
    assert exported.returncode == 0, exported.stderr[-3000:]
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [None, 48, 48, 3]
    assert manifest["reference"]["input_range"] == "0-1"
    assert manifest["reference"]["output"] == "logits"  # a softmax was added to every artifact
    verified = run_cli("verify", str(release), "--data", str(data))
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    from edgekit.device import runtime

    int8 = runtime.load(release / "model_int8.tflite")
    probabilities = int8.predict(prepared.test.images[:5].astype(np.uint8))
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-2)  # probabilities, not logits


def test_a_model_that_is_not_an_image_classifier_is_one_error_line(tmp_path, test_split):
    import keras

    data = tinted_folder(tmp_path / "mine", test_split, per_class=5)
    vector_in = keras.Input((64,))
    two_a, two_b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()
    cases = {
        "vector.keras": (keras.Model(vector_in, keras.layers.Dense(4)(vector_in)),
                         "takes input of shape [None, 64]"),
        "two-inputs.keras": (keras.Model([two_a, two_b], keras.layers.Dense(4)(
            keras.layers.Concatenate()([flat(two_a), flat(two_b)]))), "has 2 input(s)"),
    }
    for name, (model, fragment) in cases.items():
        path = tmp_path / name
        model.save(path)
        result = run_cli("export", "--model", str(path), "--data", str(data), "--input-range",
                         "0-1", "--output-dir", str(tmp_path / "out"))
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == 1 and len(errors) == 1 and fragment in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()  # nothing written
