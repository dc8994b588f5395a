"""Export details that the parity suite would only show indirectly."""

import numpy as np

from conftest import requires_tensorflow
from edgekit.contract import FASHION_MNIST


@requires_tensorflow
def test_fp16_tflite_keeps_the_first_convolution_in_float32(tmp_path):
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from edgekit.device import runtime
    from edgekit.workstation import export, models
    from edgekit.workstation.config import Quantization, TrainConfig
    from edgekit.workstation.export import tflite_graph

    model = models.build(TrainConfig.for_architecture("edge"))
    with export.quiet_native_output():
        blob = export.to_tflite(model, Quantization.FLOAT16, None, FASHION_MNIST)
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    graph = parsed.subgraphs[0]
    first = tflite_graph._first_conv(parsed)
    filter_tensor = graph.tensors[first.inputs[1]]
    assert filter_tensor.type == schema.TensorType.FLOAT32
    assert parsed.buffers[filter_tensor.buffer].data is not None  # a constant, no DEQUANTIZE
    # The other layers' weights stay fp16.
    half = [tensor for tensor in graph.tensors if tensor.type == schema.TensorType.FLOAT16]
    assert len(half) >= 10
    # Same function as the Keras model (random weights: only the numerics are compared).
    pixels = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1)).astype(np.float32)
    path = tmp_path / "model_fp16.tflite"
    path.write_bytes(blob)
    outputs = runtime.load(path, verify_sha256=False).predict(pixels)
    expected = np.asarray(model(pixels, training=False))
    assert np.abs(outputs - expected).max() < 5e-3


@requires_tensorflow
def test_tflite_flatten_has_a_constant_shape_and_any_batch_size(tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    from edgekit.device import runtime
    from edgekit.workstation import export, models
    from edgekit.workstation.config import Quantization, TrainConfig
    from edgekit.workstation.export import tflite_graph

    model = models.build(TrainConfig())
    pixels = np.random.default_rng(1).integers(0, 256, (37, 28, 28, 1)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    with export.quiet_native_output():
        blob = export.to_tflite(model, Quantization.NONE, None, FASHION_MNIST)
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    names = tflite_graph._operator_names()
    operators = [tflite_graph._operator_name(parsed, op, names) for op in parsed.subgraphs[0].operators]
    assert "RESHAPE" in operators
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(operators)
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(blob)
    loaded = runtime.load(path, verify_sha256=False)
    for batch in (1, 37):  # one image, then a resize to many: the constant shape fits both
        assert np.abs(loaded.predict(pixels[:batch]) - expected[:batch]).max() < 1e-5
    assert tflite_graph.static_flatten(blob) == blob  # nothing left to fold
