"""``onnx.checker`` on an exported file: a workstation-side check that ``edgekit verify`` adds
where the onnx package is installed (the device side never imports onnx)."""

from __future__ import annotations

from pathlib import Path

from edgekit import errors


def check_onnx_graph(path: Path) -> None:
    """Run ``onnx.checker`` on an ONNX file (other files pass), where onnx is installed.

    Not on the ``predict`` path: importing onnx costs about 0.3 s, and ONNX Runtime
    validates the graph itself when it loads it.
    """
    import importlib.util

    if path.suffix.lower() != ".onnx" or importlib.util.find_spec("onnx") is None:
        return
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # ValidationError, DecodeError, OSError...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise errors.ModelError(f"{path} fails onnx.checker: {first_line}. "
                                "Re-export it with `edgekit export`.") from error
