"""What every exported file embeds about itself, in either format."""

from __future__ import annotations

from typing import Any

from edgekit import __version__
from edgekit.contract import INPUT_CONTRACT, LABELS


def edgekit_metadata() -> dict[str, Any]:
    return {"labels": list(LABELS), "input": INPUT_CONTRACT, "generator": f"edgekit {__version__}"}
