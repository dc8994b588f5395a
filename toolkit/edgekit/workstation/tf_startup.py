"""TensorFlow's start-up lines, kept off the terminal (imports no TensorFlow itself).

TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` for its own log lines, but importing TensorFlow 2.21
also logs through Abseil before Abseil's logging is initialised, and such lines ignore every
threshold (measured: they print with the variable at 3, set in the shell or in ``os.environ``;
the second line is one line)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796609962.806656   11720 cudart_stub.cc:31] Could not find cuda drivers on your
    machine, GPU will not be used.

:func:`install` (called by the command line before any command runs) sets the variables and
puts a finder first on ``sys.meta_path`` that runs ``import tensorflow``, wherever it happens
first, with file descriptor 2 captured: Abseil's preamble and informational (``I``) log lines are
dropped, everything else (warnings, errors, Python's warnings) is written back to stderr.
``EDGEKIT_VERBOSE=1`` (what ``--verbose`` sets) lets everything through.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from edgekit.device import quiet

ENVIRONMENT = {
    # TensorFlow's own log lines below FATAL. At 2 (errors shown) every CPU-only run logs "E ...
    # cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)" at its first operation;
    # TensorFlow's real failures reach edgekit as Python exceptions, shown as one Error: line.
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Abseil's line format, informational severity ("I0000 00:00:1796609962.806656  11720 x.cc:31] ")
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] ")
# cpu_feature_guard's informational message continues on a second line.
CONTINUATION = "To enable the following instructions:"


def install() -> None:
    """Set TensorFlow's logging variables (unless the user did) and quiet its import."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if not any(isinstance(finder, QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietImportFinder())


def without_start_up_lines(text: str) -> str:
    """``text`` without Abseil's preamble and informational log lines (and their continuation)."""
    kept: list[str] = []
    dropped_info = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if bare == ABSL_PREAMBLE or INFO_LINE.match(bare) or (
                dropped_info and bare.startswith(CONTINUATION)):
            dropped_info = bare != ABSL_PREAMBLE
            continue
        dropped_info = False
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def start_up_quieted() -> Iterator[None]:
    """Capture fd 2 (native code writes below ``sys.stderr``) and write back what is not noise;
    everything passes when verbose."""
    captured = None
    try:
        with quiet.native_stderr() as captured:
            yield
    finally:
        if captured is not None and captured.text:
            sys.stderr.write(without_start_up_lines(captured.text))
            sys.stderr.flush()


class QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader in :class:`QuietLoader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = QuietLoader(spec.loader)
                return spec
        return None


class QuietLoader(importlib.abc.Loader):
    """Runs the real loader with the start-up lines quieted; the module keeps the real loader."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with start_up_quieted():
            self.loader.exec_module(module)
