"""The tensor arena TFLM needs, read from its own allocation record — not estimated.

TFLM's Python interpreter runs on a ``RecordingMicroAllocator``; ``print_allocations()`` writes
its record to fd 2 (``[RecordingMicroAllocator] Arena allocation total 21616 bytes``, then head,
tail and one line per kind of allocation) and there is no getter. So the interpreter runs in a
child Python that builds it, invokes it once on a zero image and prints the record; the parent
parses the child's stderr. A crash of TFLM's C++ code on a damaged file ends the child, not the
command.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekit import errors
from edgekit.device.micro import flatbuffer, tflm

TIMEOUT_SECONDS = 120
RECORD_LINE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")
KIND_LINE = re.compile(r"\[RecordingMicroAllocator\] '([^']+)' used (\d+) bytes")
# The child imports only TFLM and numpy (never edgekit): the record is TFLM's own.
CHILD = """
import json, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
data = open(sys.argv[1], 'rb').read()
arena = int(sys.argv[2]) or None
try:
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
    detail = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(detail['shape'], detail['dtype']), 0)
    interpreter.invoke()
except Exception as error:
    print(json.dumps({'error': str(error)}))
    sys.exit(0)
sys.stderr.flush()
interpreter.print_allocations()
print(json.dumps({'error': None}))
"""


@dataclasses.dataclass(frozen=True)
class ArenaRecord:
    """TFLM's record: the arena in use (head: non-persistent, tail: persistent) and by kind."""

    total_bytes: int
    head_bytes: int
    tail_bytes: int
    by_kind: dict[str, int]
    given_bytes: int | None  # the arena size the interpreter was built with (None: TFLM's default)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_record(text: str) -> dict[str, Any]:
    """The numbers of a ``print_allocations()`` record; ``ValueError`` without a total."""
    totals = {name: int(value) for name, value in RECORD_LINE.findall(text)}
    if "total" not in totals:
        raise ValueError("no 'Arena allocation total' line in TFLM's allocation record")
    return {"total_bytes": totals["total"], "head_bytes": totals.get("head", 0),
            "tail_bytes": totals.get("tail", 0),
            "by_kind": {kind: int(value) for kind, value in KIND_LINE.findall(text)}}


def measure(path: Path, arena_bytes: int | None = None) -> ArenaRecord:
    """Build and invoke ``path`` under TFLM in a child process and return its allocation record.

    ``arena_bytes`` sets the arena the interpreter gets (default: TFLM's own, ten times the
    model); one that is too small is a ``ModelError`` with TFLM's shortfall.
    """
    tflm.import_runtime()
    path = Path(path)
    summary = flatbuffer.summarise(path)
    flatbuffer.require_integer_model(path, summary)
    tflm.check_ops(path, summary)
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(path), str(arena_bytes or 0)],
                               capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                               check=False)
    except subprocess.TimeoutExpired as error:
        raise errors.ModelError(f"TensorFlow Lite Micro did not finish building {path.name} in "
                                f"{TIMEOUT_SECONDS} s.") from error
    if child.returncode != 0:
        raise errors.ModelError(
            f"TensorFlow Lite Micro crashed on {path.name} (exit code {child.returncode}): the "
            "file is damaged or uses something TFLM cannot run. Re-export it with `edgekit export`.")
    try:
        outcome = json.loads(child.stdout.strip().splitlines()[-1])
        if outcome["error"] is not None:
            raise errors.ModelError(tflm.describe_failure(path, outcome["error"], child.stderr,
                                                          arena_bytes))
        return ArenaRecord(**parse_record(child.stderr), given_bytes=arena_bytes)
    except (IndexError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise errors.ModelError(f"TensorFlow Lite Micro's allocation record for {path.name} could "
                                f"not be read ({error}); run with --verbose to see it.") from error
