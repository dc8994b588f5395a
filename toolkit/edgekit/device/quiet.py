"""Keep the runtimes' own log lines off the user's terminal (device-safe, stdlib only).

LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` and TFLM prints its
allocator's complaints from C++ straight to file descriptor 2, below Python's ``sys.stderr``, so
``contextlib.redirect_stderr`` cannot catch them: :func:`native_stderr` points fd 2 at a
temporary file for the duration and hands back what was written (used in error messages).
``--verbose`` (or ``EDGEKIT_VERBOSE=1``) lets them through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

VERBOSE_VARIABLE = "EDGEKIT_VERBOSE"
# fd 2 is one per process: one redirect at a time across threads; re-entrant, so a block may
# open inside another on the same thread (the inner one's text ends up in the outer's file).
_lock = threading.RLock()


@dataclasses.dataclass
class Captured:
    """What native code wrote to fd 2 inside the block (empty when verbose)."""

    text: str = ""


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


def set_verbose(enabled: bool) -> None:
    """Let runtime log lines through (the CLI's ``--verbose``); child processes inherit it."""
    if enabled:
        os.environ[VERBOSE_VARIABLE] = "1"
    else:
        os.environ.pop(VERBOSE_VARIABLE, None)


@contextlib.contextmanager
def native_stderr(force: bool = False) -> Iterator[Captured]:
    """Capture what C/C++ code writes to fd 2 inside the block; pass it through when verbose.

    ``force`` captures even when verbose (for output that is parsed, not shown).
    """
    captured = Captured()
    if verbose() and not force:
        yield captured
        return
    with _lock, tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
