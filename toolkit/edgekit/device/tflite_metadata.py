"""Read the ``edgekit`` metadata entry of a TFLite file (device-safe).

Uses the flatbuffer schema that ships inside ai-edge-litert; the writer lives in
``edgekit.workstation.export`` (TensorFlow's flatbuffer utilities), since ``tflite-support`` has no
wheels for current Pythons.
"""

from __future__ import annotations

import json
from typing import Any

METADATA_NAME = "edgekit"


def read(flatbuffer: bytes) -> dict[str, Any] | None:
    """The JSON stored under the ``edgekit`` metadata name, or None if absent."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME.encode():
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(raw).decode("utf-8"))
    return None
