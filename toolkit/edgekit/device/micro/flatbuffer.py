"""What a ``.tflite`` file holds, read without TensorFlow and without running it.

Uses the flatbuffer schema module shipped inside ai-edge-litert (a device dependency, as
:mod:`edgekit.device.tflite_metadata` does). Every table is walked once, so a truncated or
damaged file fails here with one message, before TFLM's C++ code ever sees it.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

from edgekit import errors

TFLITE_IDENTIFIER = b"TFL3"
QUANTISED_DTYPES = ("int8", "uint8")


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None
    zero_point: int | None


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """The ops (in graph order, once each), the input and output tensors, the size."""

    ops: tuple[str, ...]
    operators: int
    input: Tensor
    output: Tensor
    bytes: int


def _type_names(schema: Any) -> dict[int, str]:
    return {value: name.lower() for name, value in vars(schema.TensorType).items()
            if not name.startswith("_")}


def _op_names(schema: Any) -> dict[int, str]:
    return {value: name for name, value in vars(schema.BuiltinOperator).items()
            if not name.startswith("_")}


def _tensor(schema: Any, graph: Any, index: int) -> Tensor:
    tensor = graph.Tensors(index)
    dtype = _type_names(schema).get(tensor.Type(), f"type {tensor.Type()}")
    quantization = tensor.Quantization()
    scale = zero_point = None
    if quantization is not None and quantization.ScaleLength():
        scale = float(quantization.Scale(0))
        zero_point = int(quantization.ZeroPoint(0)) if quantization.ZeroPointLength() else 0
    return Tensor(name=(tensor.Name() or b"").decode("utf-8", errors="replace"), dtype=dtype,
                  shape=tuple(int(d) for d in tensor.ShapeAsNumpy()), scale=scale,
                  zero_point=zero_point)


def _walk(data: bytes) -> ModelSummary:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    op_names = _op_names(schema)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # as TFLM reads it
        custom = code.CustomCode()
        codes.append(f"CUSTOM:{custom.decode('utf-8', errors='replace')}"
                     if custom else op_names.get(builtin, f"BUILTIN_{builtin}"))
    for index in range(model.BuffersLength()):  # touches every byte range the file claims
        buffer = model.Buffers(index)
        if buffer.Offset() and buffer.Offset() + buffer.Size() > len(data):
            raise ValueError("a buffer lies past the end of the file")
        buffer.DataAsNumpy()
    if model.SubgraphsLength() < 1:
        raise ValueError("no subgraph")
    ops: list[str] = []
    operators = 0
    for graph_index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(graph_index)
        for index in range(graph.TensorsLength()):
            _tensor(schema, graph, index)
        for index in range(graph.OperatorsLength()):
            operator = graph.Operators(index)
            name = codes[operator.OpcodeIndex()]
            operators += 1
            if name not in ops:
                ops.append(name)
    main = model.Subgraphs(0)
    if main.InputsLength() != 1 or main.OutputsLength() != 1:
        raise errors.ModelError(f"the model has {main.InputsLength()} input(s) and "
                                f"{main.OutputsLength()} output(s), not one image input and one "
                                "probability output")
    return ModelSummary(ops=tuple(ops), operators=operators,
                        input=_tensor(schema, main, main.Inputs(0)),
                        output=_tensor(schema, main, main.Outputs(0)), bytes=len(data))


def summarise(path: Path, data: bytes | None = None) -> ModelSummary:
    """Read the op list and tensors of ``path``; a damaged file is one ``ModelError``."""
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise errors.ModelError(f"cannot read {path}: {error.strerror or error}") from error
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise errors.ModelError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier): it is "
                                "corrupt or another format. Re-export it with `edgekit export`.")
    try:
        return _walk(data)
    except errors.ModelError as error:
        raise errors.ModelError(f"{Path(path).name}: {error}.") from error
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise errors.ModelError(
            f"{path} is truncated or damaged ({error}); TFLite's flatbuffer cannot be read. "
            "Re-export it with `edgekit export`, or copy it again.") from error


def require_integer_model(path: Path, summary: ModelSummary) -> None:
    """The TFLM path takes full-integer models (int8 or uint8 input and output)."""
    for role, tensor in (("input", summary.input), ("output", summary.output)):
        if tensor.dtype not in QUANTISED_DTYPES or not tensor.scale:
            raise errors.ModelError(
                f"{Path(path).name} has a {tensor.dtype} {role}: the microcontroller path takes a "
                "full-integer (int8) TFLite model. Use model_int8.tflite, made by `edgekit export "
                "--format tflite --quantize int8`.")
