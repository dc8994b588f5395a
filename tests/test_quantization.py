"""Diagnosis and repair of int8 artifacts that fail parity (issue 27).

Fast: the per-layer arithmetic on synthetic tensors, the Keras-name mapping, near-tie flips,
and the one-line error without TensorFlow. Slow: a trained model with one outlier activation
channel (tests/outlier_case.py) exported int8, diagnosed (``verify --layers`` names
``outlier_conv`` first for TFLite and ONNX), repaired (``export --keep-float auto``: by
cross-layer equalisation; then by hand, keeping two layers float) and verified. The other levers
are tested in test_quantization_levers.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import requires_tensorflow, run_cli
from edgekit.device import parity


def test_an_outlier_channel_is_blamed_on_the_layer_that_makes_it():
    from edgekit.workstation.quantization import measures

    rng = np.random.default_rng(0)
    before = rng.normal(size=(64, 8, 8, 4)).astype(np.float32)
    wide = rng.uniform(0, 1, size=(64, 8, 8, 16)).astype(np.float32)
    wide[..., 3] *= 1000
    step = measures.Quantised(float(wide.max()) / 255, 0, 0, 255)
    quantised = measures.fake_quantise(wide, step)
    back = wide.copy()
    back[..., 3] /= 1000
    back_quantised = quantised.copy()
    back_quantised[..., 3] /= 1000
    errors = [
        measures.layer_error("first", "t0", before, before + 1e-3, None),
        measures.layer_error("outlier", "t1", wide, quantised, step),
        measures.layer_error("scale_back", "t2", back, back_quantised,
                             measures.Quantised(float(back.max()) / 255, 0, 0, 255)),
    ]
    # The pooled SQNR of the outlier tensor stays high: only the channels show the damage.
    assert errors[1].sqnr_db > 30 and errors[1].worst_channel_sqnr_db < 1
    ranked = measures.rank(errors, {"outlier": ["first"], "scale_back": ["outlier"]})
    assert [error.layer for error in ranked][0] == "outlier"
    assert ranked[0].score > 0.5 > max(error.score for error in ranked[1:])


def test_converter_tensor_names_map_to_the_last_keras_layer_they_name():
    from edgekit.workstation.quantization import keras_side

    order = {"stem_conv": 0, "stem_bn": 1, "stem_relu": 2, "pool": 3}
    fused = ("model_1/stem_relu_1/Relu;model_1/stem_bn_1/batchnorm/add_1;"
             "model_1/stem_conv_1/convolution")
    assert keras_side.last_layer_named(fused, order) == "stem_relu"
    assert keras_side.last_layer_named("model_1/pool_1/MaxPool2d:0", order) == "pool"
    assert keras_side.last_layer_named("serving_default_pixels:0", order) is None
    # Default names: layer conv2d is traced as conv2d_1, layer conv2d_1 as conv2d_1_2.
    defaults = {"conv2d": 0, "conv2d_1": 1}
    assert keras_side.last_layer_named("functional_1/conv2d_1/Relu:0", defaults) == "conv2d"
    assert keras_side.last_layer_named("functional_1/conv2d_1_2/Relu:0", defaults) == "conv2d_1"


def test_flips_on_near_ties_are_counted_apart_from_confident_flips():
    reference = np.array([[0.51, 0.49, 0.0], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    outputs = np.array([[0.47, 0.53, 0.0], [0.3, 0.65, 0.05], [0.2, 0.7, 0.1]])
    measures = parity.measure(reference, outputs, np.array([0, 0, 1]), ("a", "b", "c"))
    assert [flip["near_tie"] for flip in measures["flips"]] == [True, False]
    assert (measures["near_tie_flips"], measures["confident_flips"]) == (1, 1)


def test_verify_layers_without_tensorflow_is_one_error_line(exported, monkeypatch, runner):
    import importlib.util

    from edgekit.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    result = runner.invoke(main, ["verify", str(exported), "--layers"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "edgekit[train]" in lines[0]


@pytest.mark.slow
@requires_tensorflow
def test_outlier_channel_is_diagnosed_and_repaired_with_the_fewest_float_layers(tmp_path):
    import outlier_case

    data, model = outlier_case.make(tmp_path)
    release = model.parent
    common = ["export", "--model", str(model), "--data", str(data), "--quantize", "int8",
              "--calibration-size", "200", "--no-explanations"]
    exported = run_cli(*common)
    assert exported.returncode == 0, exported.stderr[-2000:]
    failed = run_cli("verify", str(release))
    assert failed.returncode == 1
    assert f"edgekit verify {release} --layers" in failed.stdout
    diagnosed = run_cli("verify", str(release), "--layers")
    assert diagnosed.returncode == 0, diagnosed.stderr[-2000:]
    for artifact in ("model_int8.tflite", "model_int8.onnx"):
        table = diagnosed.stdout.split(f"{artifact} (int8):")[1]
        first_row = [line for line in table.splitlines() if line.startswith("| 1 |")][0]
        assert first_row.split("|")[2].strip() == "outlier_conv"
    # No layer is named before the ranked list.
    head = diagnosed.stdout.split("model_int8.tflite (int8):")[0]
    assert "outlier_conv" not in head and "scale_back" not in head
    report = json.loads((release / "reports" / "layers.json").read_text())
    assert report["split"] == "validation"
    assert (release / "reports" / "layers.png").stat().st_size > 0

    # outlier_conv -> scale_back is an equalisable pair (ReLU between), and equalisation comes
    # before keeping layers float in the search: every layer stays int8.
    repaired = run_cli(*common, "--keep-float", "auto")
    assert repaired.returncode == 0, repaired.stdout[-2000:] + repaired.stderr[-2000:]
    manifest = json.loads((release / "manifest.json").read_text())
    int8 = [entry for entry in manifest["artifacts"] if entry["precision"] == "int8"]
    assert {entry["file"] for entry in int8} == {"model_int8.tflite", "model_int8.onnx"}
    for entry in int8:
        assert entry["export"]["keep_float"] == []
        assert ["outlier_conv", "scale_back"] in entry["export"]["equalized"]
        steps = entry["export"]["keep_float_search"]["steps"]
        assert not steps[0]["passed"] and steps[-1]["passed"]
        assert steps[-1]["levers"] == ["equalization"]
        assert entry["export"]["int8_macs_share"] == 1.0
    verified = run_cli("verify", str(release))
    assert verified.returncode == 0, verified.stdout[-2000:]
    # Kept float by hand, the two layers repair it too (the search's former answer).
    by_hand = run_cli(*common, "--keep-float", "outlier_conv", "--keep-float", "scale_back")
    assert by_hand.returncode == 0, by_hand.stderr[-2000:]
    manifest = json.loads((release / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        assert sorted(entry["export"]["keep_float"]) == ["outlier_conv", "scale_back"]
        assert entry["export"]["equalized"] == []
        assert 0 < entry["export"]["int8_macs_share"] < 1
    assert run_cli("verify", str(release)).returncode == 0


def test_auto_tries_single_layers_then_each_with_its_reader_then_other_pairs():
    from edgekit.workstation.quantization import levers, measures
    from edgekit.workstation.quantization.diagnose import Diagnosis

    def error(name: str) -> measures.LayerError:
        return measures.LayerError(name, name, 0, 0, 0, 0, None)

    ranked = [error(name) for name in ("b", "d", "a", "c", "e")]
    diagnosis = Diagnosis("model_int8.tflite", "int8", ["a", "b", "c", "d", "e"], ranked)
    parents = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"], "e": ["d"]}
    sets = sum(levers.keep_float_sets([diagnosis], {"a", "b", "c", "d", "e"}, parents), [])
    assert sets[:4] == [("b",), ("d",), ("a",), ("c",)]
    assert sets[4:8] == [("b", "c"), ("d", "e"), ("a", "b"), ("c", "d")]
    assert ("b", "d") in sets[8:] and len({frozenset(keep) for keep in sets}) == len(sets)


@requires_tensorflow
def test_dynamic_range_file_keeps_the_named_layer_float(tmp_path):
    from ai_edge_litert import interpreter as litert

    import outlier_case
    from edgekit import contract as contract_module
    from edgekit.device import runtime
    from edgekit.workstation import export
    from edgekit.workstation.config import Quantization

    model = outlier_case.build()
    contract = contract_module.InputContract(
        height=16, width=16, channels=1, labels=contract_module.placeholder_labels(10),
        preparation=contract_module.default_preparation(1))
    with export.quiet_native_output():
        plain = export.to_tflite(model, Quantization.DYNAMIC, None, contract)
        kept = export.to_tflite(model, Quantization.DYNAMIC, None, contract, ("outlier_conv",))

    def weight_types(blob: bytes) -> dict[str, str]:
        interpreter = litert.Interpreter(model_content=blob)
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        return {details[op["outputs"][0]]["name"].split(";")[0].split("/")[1]:
                details[op["inputs"][1]]["dtype"].__name__
                for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"}

    assert weight_types(plain)["outlier_conv_1"] == "int8"
    assert weight_types(kept)["outlier_conv_1"] == "float32"
    assert weight_types(kept)["conv_b_1"] == "int8"  # only the named layer changes
    path = tmp_path / "model_dynamic.tflite"
    path.write_bytes(kept)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    outputs = runtime.load(path, verify_sha256=False).predict(pixels)
    assert np.abs(outputs - expected).max() < 0.05


@requires_tensorflow
def test_a_wrapped_model_is_diagnosed_by_its_own_layer_names():
    import keras

    from edgekit.workstation.quantization import keras_side
    from edgekit.workstation.quantization.measures import nearest_measured

    inner_input = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, activation="relu", name="inner_conv")(inner_input)
    x = keras.layers.Flatten()(x)
    inner = keras.Model(inner_input, keras.layers.Dense(2, name="inner_dense")(x), name="users")
    pixels = keras.Input((6, 6, 1), name="pixels")
    scaled = keras.layers.Rescaling(1 / 255, name="edgekit_scale")(pixels)
    wrapped = keras.Model(pixels, keras.layers.Softmax(name="edgekit_softmax")(inner(scaled)))
    names = [layer.name for layer in keras_side.layers_in_order(wrapped)]
    assert names == ["edgekit_scale", "inner_conv", "inner_dense", "edgekit_softmax"]
    images = np.random.default_rng(0).uniform(0, 255, (5, 6, 6, 1)).astype(np.float32)
    outputs = keras_side.intermediate_outputs(wrapped, images)
    assert set(names) <= set(outputs)
    np.testing.assert_allclose(outputs["edgekit_softmax"], np.asarray(wrapped(images)), atol=1e-6)
    np.testing.assert_allclose(outputs["inner_conv"], np.asarray(
        keras.Model(inner.inputs, inner.get_layer("inner_conv").output)(images / 255)), atol=1e-5)
    parents = keras_side.parent_map(wrapped)
    assert nearest_measured("inner_conv", parents, set(names)) == {"edgekit_scale"}
    assert nearest_measured("edgekit_softmax", parents, set(names)) == {"inner_dense"}
    assert keras_side.macs_by_layer(wrapped)["inner_conv"] == 4 * 4 * 3 * 9


def test_layers_fused_into_one_tensor_are_named_and_kept_together():
    from edgekit.workstation.quantization import levers, measures
    from edgekit.workstation.quantization.diagnose import Diagnosis

    parents = {"conv_a": ["scale"], "scale": [], "conv": ["conv_a"], "bn": ["conv"],
               "relu": ["bn"], "back": ["relu"], "head": ["back"]}
    computing = ["scale", "conv_a", "conv", "bn", "relu", "back", "head"]
    measured = {"conv_a", "relu", "back", "head"}
    assert measures.group_of("relu", parents, measured, computing) == ["conv", "bn", "relu"]
    assert measures.group_of("conv_a", parents, measured, computing) == ["scale", "conv_a"]
    errors = [measures.LayerError(name, name, 0, 0, 0, nsr, None)
              for name, nsr in (("conv_a", 0.0), ("relu", 0.9), ("back", 0.9), ("head", 0.9))]
    ranked = measures.rank(errors, parents, computing)
    assert ranked[0].label == "conv + bn + relu"
    sets = sum(levers.keep_float_sets([Diagnosis("m.onnx", "int8", [], ranked)], set(computing),
                                      parents), [])
    assert sets[0] == ("conv", "bn", "relu")
    assert ("conv", "bn", "relu", "back") in sets[:6]


@requires_tensorflow
def test_keep_float_names_an_unknown_layer_in_one_error_line(exported, runner, tmp_path):
    from edgekit.cli import main

    result = runner.invoke(main, ["export", "--model", str(exported / "model.keras"),
                                  "--quantize", "int8", "--keep-float", "no_such_layer",
                                  "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "no_such_layer" in lines[0]
    assert "stem_conv" in lines[0]  # the layers it does have
    assert not list(tmp_path.iterdir())
