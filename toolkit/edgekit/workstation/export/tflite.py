"""Keras -> TFLite: one conversion per precision, int8 calibration, embedded metadata.

The flatbuffer edits made after conversion are in ``tflite_graph``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import tflite_metadata
from edgekit.workstation.config import Quantization
from edgekit.workstation.export.metadata import edgekit_metadata
from edgekit.workstation.export.tflite_graph import keep_first_conv_float32, static_flatten


def to_tflite(model: Any, quantization: Quantization, calibration: np.ndarray,
              contract: InputContract, keep_float: tuple[str, ...] = ()) -> bytes:
    """``keep_float``: Keras layers left in float in the int8 and dynamic files (see
    quantization.repair)."""
    import tensorflow as tf

    # from_keras_model freezes Keras 3 variables into the flatbuffer; from_concrete_functions
    # on a Keras 3 model leaves READ_VARIABLE ops without data.
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == Quantization.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == Quantization.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == Quantization.INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        if quantization == Quantization.INT8 and keep_float:
            from edgekit.workstation.quantization import repair

            flatbuffer = repair.int8_keeping_float(model, calibration, keep_float)
        else:
            flatbuffer = converter.convert()
        if quantization == Quantization.DYNAMIC and keep_float:
            from edgekit.workstation.quantization import repair

            float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            flatbuffer = repair.dynamic_keeping_float(flatbuffer, float32, keep_float)
        if quantization == Quantization.FLOAT16:
            float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            flatbuffer = keep_first_conv_float32(flatbuffer, float32)
        flatbuffer = static_flatten(flatbuffer)
    except Exception as error:
        raise errors.ExportError(f"TFLite conversion ({quantization.value}) failed: "
                                 f"{str(error).splitlines()[0][:300]}") from error
    return add_tflite_metadata(flatbuffer, contract)


def _representative(calibration: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None]]
    return generate


def add_tflite_metadata(flatbuffer: bytes, contract: InputContract) -> bytes:
    """Embed labels and the input contract as a TFLite metadata entry named ``edgekit``.

    Done with TensorFlow's flatbuffer utilities, because ``tflite-support`` (the usual
    metadata writer) has no wheels for current Pythons.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(edgekit_metadata(contract)).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = tflite_metadata.METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
