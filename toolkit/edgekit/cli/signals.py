"""SIGTERM ends a command the way Ctrl-C does.

A container runtime, systemd, a scheduler's pre-emption and ``timeout`` send SIGTERM. Python's
default for it is to die at once, without the cleanup that Ctrl-C gets (temporary files removed,
child processes killed, one ``Error:`` line). :func:`install` raises :class:`Terminated` — a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` clean-up in the library runs for it
too — and :func:`received` tells :func:`edgekit.cli.run` which signal it was, for the exit code.

SIGINT is left alone: Python's own handler already raises ``KeyboardInterrupt``, and where the
parent ignored SIGINT on purpose (``nohup``, a background job of a script) that choice stands.
"""

from __future__ import annotations

import signal
import types

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives."""


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    if _received:  # a second SIGTERM while cleaning up: let the clean-up finish
        return
    _received.append(signum)
    raise Terminated()


def install() -> None:
    """Handle SIGTERM like Ctrl-C, unless whoever started us chose to ignore it."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def received() -> int | None:
    """The signal number that ended the command, if one did."""
    return _received[0] if _received else None
