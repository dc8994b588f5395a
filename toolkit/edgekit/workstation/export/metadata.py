"""What every exported file embeds about itself, in either format."""

from __future__ import annotations

from typing import Any

from edgekit import __version__
from edgekit.contract import InputContract


def edgekit_metadata(contract: InputContract) -> dict[str, Any]:
    """Labels and the input contract, read back by edgekit.runtime where no manifest is near."""
    return {"labels": list(contract.labels), "input": contract.to_dict(),
            "generator": f"edgekit {__version__}"}
