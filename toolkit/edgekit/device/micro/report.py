"""``edgekit micro``: flash, arena, ops and board fit of a release's int8 TFLite model.

Flash is the model's bytes; the arena is TFLM's own allocation record (:mod:`arena`); both get
the stated margin before they are compared with a board's RAM and flash (boards.json, data). The
firmware, TFLM's kernels and the application need their own share of both: the table shows what
is left for them.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
from pathlib import Path
from typing import Any

from edgekit import errors, fileio
from edgekit import manifest as manifest_module
from edgekit.device import runtime
from edgekit.device.micro import arena, flatbuffer, tflm

DEFAULT_MARGIN_PERCENT = 20.0
ARENA_ALIGNMENT = 16  # TFLM aligns the arena's buffers to 16 bytes; keep its size a multiple
PC_LATENCY_NOTE = ("TFLM runs here as its host build on a PC: its speed on this machine says nothing "
                   "about a microcontroller's; time it on the board.")


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    chip: str
    core: str
    ram_bytes: int
    flash_bytes: int


def boards() -> list[Board]:
    """The boards of ``boards.json`` (shipped with the package)."""
    text = importlib.resources.files("edgekit.device.micro").joinpath("boards.json").read_text()
    return [Board(**entry) for entry in json.loads(text)["boards"]]


def with_margin(value: int, margin_percent: float) -> int:
    padded = math.ceil(value * (1 + margin_percent / 100))
    return -(-padded // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def find_model(release: Path) -> Path:
    """``release`` itself if it is a file, else the int8 TFLite artifact its manifest lists."""
    release = Path(release)
    if release.is_file():
        return release
    if not release.is_dir():
        raise errors.ModelError(f"{release} does not exist{fileio.relative_to_cwd(release)}; pass "
                                "a release folder (e.g. exported) or a .tflite file.")
    manifest = manifest_module.load(release)
    for entry in manifest["artifacts"]:
        if entry.get("format") == "tflite" and entry.get("precision") == "int8":
            manifest_module.safe_file(release, entry["file"])  # inside the release, or an error
            return release / entry["file"]
    raise errors.ModelError(f"{release}/manifest.json lists no int8 TFLite model; make one with "
                            "`edgekit export --format tflite --quantize int8`.")


def _quantisation(tensor: flatbuffer.Tensor) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape),
            "scale": tensor.scale, "zero_point": tensor.zero_point}


def _fits(board: Board, flash: int, ram: int) -> dict[str, Any]:
    return {**dataclasses.asdict(board), "fits": flash <= board.flash_bytes and ram <= board.ram_bytes,
            "ram_left_bytes": board.ram_bytes - ram, "flash_left_bytes": board.flash_bytes - flash}


def build(release: Path, margin_percent: float = DEFAULT_MARGIN_PERCENT,
          arena_bytes: int | None = None) -> dict[str, Any]:
    """Everything ``edgekit micro`` prints, as one JSON-ready dict."""
    path = find_model(release)
    # First in a child process: a file that crashes TFLM's C++ code ends the child, not us.
    record = arena.measure(path, arena_bytes)
    model = runtime.load(path, runtime=tflm.RUNTIME_NAME)  # sha256 against the manifest, contract
    summary: flatbuffer.ModelSummary = model.summary  # type: ignore[attr-defined]
    flash, ram = with_margin(summary.bytes, margin_percent), with_margin(record.total_bytes,
                                                                         margin_percent)
    supported = tflm.supported_ops()
    return {
        "model": str(path),
        "sha256": fileio.sha256_of(path),
        "tflite_micro_version": tflm.version(),
        "flash_bytes": summary.bytes,
        "flash_with_margin_bytes": flash,
        "arena_bytes": record.total_bytes,
        "arena_with_margin_bytes": ram,
        "margin_percent": margin_percent,
        "arena_record": record.to_dict(),
        "operators": summary.operators,
        "ops": [{"op": op, "supported": op in supported} for op in summary.ops],
        "input": _quantisation(summary.input),
        "output": _quantisation(summary.output),
        "labels": list(model.labels),
        "boards": [_fits(board, flash, ram) for board in boards()],
        "note": PC_LATENCY_NOTE,
    }


def table(report: dict[str, Any]) -> list[str]:
    """The human-readable lines of ``edgekit micro``."""
    size = fileio.human_size
    margin = report["margin_percent"]
    ops = ", ".join(f"{op['op']} {'✓' if op['supported'] else '✗'}" for op in report["ops"])
    lines = [
        f"model   {report['model']} (TFLM {report['tflite_micro_version']})",
        f"flash   {report['flash_bytes']:,} bytes (model); with {margin:g} % margin "
        f"{report['flash_with_margin_bytes']:,}",
        f"arena   {report['arena_bytes']:,} bytes (TFLM's allocation record); with {margin:g} % "
        f"margin {report['arena_with_margin_bytes']:,}",
        f"ops     {report['operators']} operators: {ops} (✓ in TFLM's op resolver)", "",
        f"| {'board':<34} | {'chip':<14} | {'RAM':>9} | {'flash':>9} | fits | "
        f"{'RAM left':>9} | {'flash left':>10} |",
        f"|{'-' * 36}|{'-' * 16}|{'-' * 11}|{'-' * 11}|------|{'-' * 11}|{'-' * 12}|",
    ]
    for board in report["boards"]:
        lines.append(
            f"| {board['name']:<34} | {board['chip']:<14} | {size(board['ram_bytes']):>9} | "
            f"{size(board['flash_bytes']):>9} | {'yes' if board['fits'] else 'no':<4} | "
            f"{_left(board['ram_left_bytes']):>9} | {_left(board['flash_left_bytes']):>10} |")
    return lines + ["", f"Fits: model and arena, each with {margin:g} % margin, within the board's "
                        "flash and RAM; what is left holds TFLM's kernels and the firmware.",
                    report["note"]]


def _left(value: int) -> str:
    return fileio.human_size(value) if value >= 0 else f"-{fileio.human_size(-value)}"
