"""Faithfulness of maps (deletion/insertion against random) and gradient maps on any Keras model.

A constructed model whose answer depends only on the top-left quadrant: every method's map
puts its mass there and its deletion AUC beats random widely; on a global-average-pooled
model Grad-CAM and HiResCAM are the same map; Sequential and nested models get gradient maps;
an export of a tiny Sequential .keras model gets its explanation reference (best effort, within
its time budget); the committed release's default map beats random.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import requires_tensorflow, run_cli
from edgekit.device.explain import faithfulness, occlusion
from test_explain import QUADRANT, TOY, save_toy_keras, toy_images, toy_predict

BACKGROUND = {"background": np.zeros(TOY.shape, np.uint8)}


@pytest.fixture(scope="module")
def toy_keras(tmp_path_factory):
    pytest.importorskip("tensorflow")
    return save_toy_keras(tmp_path_factory.mktemp("toy"))


def quadrant_mass(maps: np.ndarray) -> np.ndarray:
    positive = np.clip(maps, 0, None)
    return positive[:, QUADRANT[0], QUADRANT[1]].sum(axis=(1, 2)) / positive.sum(axis=(1, 2))


def test_curves_and_areas_of_a_known_ranking():
    images = toy_images(6)
    classes = np.zeros(6, np.int64)
    quadrant_first = np.zeros((6, 32, 32), np.float32)
    quadrant_first[:, QUADRANT[0], QUADRANT[1]] = 1
    made = faithfulness.curves(toy_predict, images, classes, quadrant_first, BACKGROUND["background"])
    assert made.deletion.shape == (6, faithfulness.STEPS + 1)
    np.testing.assert_allclose(made.deletion[:, 0], toy_predict(images)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(made.deletion[:, -1], 0.25, atol=1e-6)  # all removed: a tie
    # After a quarter of the pixels (the quadrant) the answer is gone; nothing changes later.
    np.testing.assert_allclose(made.deletion[:, 5:], 0.25, atol=1e-6)
    np.testing.assert_allclose(made.insertion[:, 5:] - made.insertion[:, -1:], 0, atol=1e-6)
    assert faithfulness.Curves.area(np.ones((1, 5)))[0] == pytest.approx(1)
    order = faithfulness.ranking(np.array([[[0.1, 0.9], [0.5, 0.5]]]))
    assert order[0, 0] == 1 and set(order[0, 1:3]) == {2, 3} and order[0, 3] == 0


def test_random_blocks_and_the_check_can_fail():
    blocks = faithfulness.random_maps((2, 10, 10), 4)
    assert blocks.shape == (2, 10, 10) and len(np.unique(blocks[0])) == 9
    assert np.all(blocks[0, :4, :4] == blocks[0, 0, 0])
    rng = np.random.default_rng(0)
    same = rng.random(50)
    scores = faithfulness.Scores({"background": {"map": same, "random": same + 0.001}},
                                 {"background": {"map": same, "random": same}}, 20)
    check = faithfulness.beats_random(scores, "map")
    assert not check["passed"] and not check["background"]["insertion"]["passed"]
    better = faithfulness.Scores({"background": {"map": same * 0.5, "random": same}},
                                 {"background": {"map": same + 0.3, "random": same}}, 20)
    assert faithfulness.beats_random(better, "map")["passed"]


def test_occlusion_of_the_quadrant_model_beats_random_widely():
    images = toy_images(8, seed=2)
    made = occlusion.occlusion_maps(toy_predict, images, 0, occlusion.default_settings(TOY))
    assert quadrant_mass(made.maps).min() > 0.9
    scores = faithfulness.score(toy_predict, images, made.classes, {"occlusion": made.maps},
                                BACKGROUND, 5)
    deletion = scores.deletion["background"]
    assert deletion["occlusion"].mean() < deletion["random"].mean() - 0.15
    assert faithfulness.beats_random(scores, "occlusion")["passed"]


@requires_tensorflow
def test_every_gradient_method_finds_the_quadrant_and_beats_random(toy_keras):
    """The toy model is global-average-pooled: Grad-CAM and HiResCAM are the same map."""
    from edgekit.workstation import evaluation, explain_reference, gradcam

    model = evaluation.load_keras_model(toy_keras)
    images = toy_images(8, seed=2)
    classes = np.zeros(8, np.int64)
    maps = {method: gradcam.class_maps(model, images, classes, None, method)
            for method in gradcam.METHODS}
    for method, method_maps in maps.items():
        assert quadrant_mass(method_maps).min() > 0.9, method
    np.testing.assert_allclose(maps["gradcam"], maps["hirescam"], atol=1e-5)
    scores = faithfulness.score(explain_reference.keras_predict(model), images, classes, maps,
                                BACKGROUND, 5)
    for method in maps:
        deletion = scores.deletion["background"]
        assert deletion[method].mean() < deletion["random"].mean() - 0.15, method
        assert faithfulness.beats_random(scores, method)["passed"], method


def sequential(size: int = 16, classes: int = 4):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((size, size, 1)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, padding="same", name="first"),
        keras.layers.ReLU(name="first_relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes, activation="softmax")])


@requires_tensorflow
def test_sequential_and_nested_models_get_gradient_maps(tmp_path):
    import keras

    from edgekit.workstation import evaluation, gradcam

    path = tmp_path / "sequential.keras"
    sequential().save(path)
    loaded = evaluation.load_keras_model(path)  # its layers' outputs belong to stale graphs
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    assert gradcam.find_layer(loaded).name == "last"
    for method in gradcam.METHODS:
        maps = gradcam.class_maps(loaded, images, None, None, method)
        assert maps.shape == (3, 16, 16) and maps.max() == pytest.approx(1, abs=1e-6)
    assert gradcam.find_layer(loaded, "first").name == "first"
    # A wrapper with the whole network as one layer (as export wraps a model it rescales).
    inputs = keras.Input((16, 16, 1))
    wrapper = keras.Model(inputs, loaded(keras.layers.Identity()(inputs)))
    wrapper.save(tmp_path / "wrapper.keras")
    nested = evaluation.load_keras_model(tmp_path / "wrapper.keras")
    assert "last" in gradcam.convolution_names(nested)
    np.testing.assert_allclose(gradcam.class_maps(nested, images), gradcam.class_maps(loaded, images),
                               atol=1e-5)
    assert nested.layers[-1].layers[-1].activation.__name__ == "softmax"  # restored


def grey_folder(root: Path, test_split, per_class: int = 75) -> Path:
    """Four Fashion-MNIST classes as 16x16 grey PNGs."""
    for fashion_class in (0, 1, 8, 9):
        members = np.flatnonzero(test_split.labels == fashion_class)[:per_class]
        for number, index in enumerate(members):
            path = root / f"class{fashion_class}" / f"{number:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(test_split.images[index, :, :, 0]).resize((16, 16)).save(path)
    return root


@pytest.mark.slow  # an export and a verify: 50-60 s on a busy 2-core machine
@requires_tensorflow
def test_a_sequential_keras_model_exports_with_its_explanation_reference(tmp_path, test_split,
                                                                         monkeypatch):
    from edgekit.device import datasets
    from edgekit.workstation import explain_reference

    data = grey_folder(tmp_path / "data", test_split)
    model = sequential()
    model.compile("adam", "sparse_categorical_crossentropy")
    prepared = datasets.open_dataset(data, size=(16, 16))
    model.fit(prepared.train.images.astype("float32"), prepared.train.labels, epochs=2, verbose=0)
    path = tmp_path / "model" / "sequential.keras"
    path.parent.mkdir()
    model.save(path)
    release = tmp_path / "release"
    exported = run_cli("export", "--model", str(path), "--data", str(data), "--format", "tflite",
                       "--quantize", "none", "--output-dir", str(release))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "Traceback" not in exported.stderr
    record = json.loads((release / "manifest.json").read_text())["reference"]["explanations"]
    assert record.get("methods") == ["gradcam", "hirescam", "layercam"], (record, exported.stdout)
    assert record["default_method"] == "hirescam" and record["images"] > 0
    assert record["seconds"] <= record["budget_seconds"] * 1.5 + 5  # a third of the export
    verified = run_cli("verify", str(release), "--data", str(data), "--explanations", "--no-write")
    assert "deletion/insertion AUC, background fill" in verified.stdout, verified.stderr[-2000:]
    # A model whose gradient maps fail still gets its occlusion reference, with a note.
    notes: list[str] = []

    def broken(*arguments, **options):
        raise ValueError("Attempt to convert a value (None) to a Tensor")

    with monkeypatch.context() as patch:
        patch.setattr(explain_reference.gradcam, "class_maps", broken)
        record = explain_reference.write_reference_maps(release, spec=datasets.DataSpec(str(data)),
                                                        echo=notes.append)
    assert record["methods"] == [] and record["default_method"] is None
    assert any("gradient maps could not be made" in note for note in notes)
    # A budget too small for even a few images: skipped, with a note in the manifest.
    monkeypatch.setattr(explain_reference, "MIN_BUDGET_SECONDS", 0.0)
    record = explain_reference.write_reference_maps(
        release, spec=datasets.DataSpec(str(data)), budget_seconds=1e-4, echo=notes.append)
    assert "skipped" in record and not (release / "explain_reference.npz").exists()
    manifest = json.loads((release / "manifest.json").read_text())
    assert "explanations_file" not in manifest["reference"]


def test_the_committed_default_map_beats_random(exported):
    report = json.loads((exported / "reports" / "explain.json").read_text())
    scored = report["faithfulness"]
    default = scored["default_method"]
    assert default == "hirescam" and scored["check"]["passed"]
    for fill in faithfulness.FILLS:
        assert report["deletion"][fill][default]["auc"] < report["random"][fill]["deletion"]["auc"]
        assert report["insertion"][fill][default]["auc"] > report["random"][fill]["insertion"]["auc"]
        assert {"gradcam", "occlusion"} <= set(report["deletion"][fill])
    assert set(report["sanity"]) == {"randomised_weights"}  # Grad-CAM vs occlusion: a number
    manifest = json.loads((exported / "manifest.json").read_text())
    assert "gradcam" in manifest["reference"]["explanations"]["versus_occlusion"]


def test_a_default_map_no_better_than_random_fails_explanation_parity(exported):
    from edgekit import manifest
    from edgekit.device.explain import parity

    reference = parity.load_reference_maps(exported, manifest.load(exported))
    assert reference.default_method == "hirescam" and reference.mean_image is not None
    same = np.random.default_rng(1).random(len(reference.indices))
    tied = {fill: {"hirescam": same, "random": same} for fill in faithfulness.FILLS}
    scored = parity.Faithfulness("model_fp32.tflite", faithfulness.Scores(tied, tied, 20), 0.0)
    measurement = parity.Measurement(reference, np.zeros(1), np.zeros(1), [], {}, scored)
    assert not measurement.passed
    assert "the hirescam map does not beat a random ranking" in parity.failure_message(measurement)
    unscored = parity.Faithfulness("model_fp32.tflite", None, 0.0, "cannot load it")
    assert "could not be scored (cannot load it)" in parity.failure_message(
        parity.Measurement(reference, np.zeros(1), np.zeros(1), [], {}, unscored))
