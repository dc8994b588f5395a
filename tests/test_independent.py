"""Every artifact run by runtimes edgekit does not wrap — TensorFlow's own TFLite interpreter
and ONNX's reference evaluator — agrees with edgekit.device.runtime and with the manifest."""

import importlib.util

import numpy as np
import pytest

from edgekit import manifest
from edgekit.device import runtime

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("onnx") is None,
    reason="needs the train extra")
COUNT = 200


def independent_tflite(path, pixels):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))  # TF's own, not ai-edge-litert
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [len(pixels), 28, 28, 1])
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32:
        feed = pixels.astype(np.float32)
    else:
        feed = np.clip(np.rint(pixels / scale) + zero_point, -128, 127).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], feed)
    interpreter.invoke()
    result = interpreter.get_tensor(output["index"])
    out_scale, out_zero = output["quantization"]
    if output["dtype"] != np.float32:
        result = (result.astype(np.float32) - out_zero) * out_scale
    return result


def independent_onnx(path, pixels):
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    # The reference evaluator implements QuantizeLinear/DequantizeLinear from opset 19 on.
    model = version_converter.convert_version(model, 21)
    evaluator = ReferenceEvaluator(model)
    name = model.graph.input[0].name
    (result,) = evaluator.run(None, {name: pixels.astype(np.float32)})
    return result


def test_independent_runtimes_agree(exported, test_split):
    payload = manifest.load(exported)
    pixels = test_split.images[:COUNT]
    labels = test_split.labels[:COUNT]
    for entry in payload["artifacts"]:
        path = exported / entry["file"]
        ours = runtime.load(path).predict(pixels)
        theirs = (independent_tflite if entry["format"] == "tflite" else independent_onnx)(path, pixels)
        tolerance = 1e-5 if entry["precision"] in ("fp32", "fp16") else 1e-2
        agreement = (ours.argmax(1) == theirs.argmax(1)).mean()
        assert agreement >= 0.995, (entry["file"], agreement)
        assert np.abs(ours - theirs).max() <= tolerance or agreement == 1.0, entry["file"]
        # The manifest's accuracy claim is consistent with what the other runtime sees.
        independent_accuracy = (theirs.argmax(1) == labels).mean()
        assert abs(independent_accuracy - entry["metrics"]["accuracy"]) < 0.05, entry["file"]
