"""``exported/manifest.json``: the device-side contract (standard library only).

The manifest names the reference model, the labels, the input contract (schema 2: size,
channels, preparation of an image file; see :mod:`edgekit.contract`), the dataset and its
split, and one entry per artifact with its size, sha256, tensors and measured parity metrics.
Schema-1 manifests (Fashion-MNIST releases before the contract became data) still load. Every ``file`` is a
plain name inside the manifest's folder; anything pointing elsewhere is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit import __version__, errors, fileio
from edgekit.contract import FASHION_MNIST, InputContract

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
REQUIRED_TOP = ("schema_version", "labels", "input", "artifacts")
REQUIRED_ARTIFACT = ("file", "format", "precision", "bytes", "sha256", "inputs", "outputs")


def empty(contract: InputContract = FASHION_MNIST) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"edgekit {__version__}",
        "labels": list(contract.labels),
        "input": contract.to_dict(),
        "reference": None,
        "artifacts": [],
    }


def contract_of(payload: dict[str, Any], folder: Path | str = ".") -> InputContract:
    """The input contract a (validated) manifest records."""
    try:
        return InputContract.from_dict(payload["input"], payload["labels"])
    except (KeyError, TypeError, ValueError) as error:
        raise errors.ManifestError(
            f"{path_in(Path(folder))}: its input contract is unreadable ({error}). Regenerate it "
            "with `edgekit export`.") from error


def path_in(folder: Path) -> Path:
    return Path(folder) / MANIFEST_FILE


def load(folder: str | Path) -> dict[str, Any]:
    """Read and validate the manifest in ``folder``."""
    path = path_in(Path(folder))
    if not path.is_file():
        raise errors.ManifestError(
            f"no {MANIFEST_FILE} in {folder}. Point at an exported folder, or create one with "
            "`edgekit export`."
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise errors.ManifestError(
            f"{path} is not valid JSON ({error}). Regenerate it with `edgekit export`."
        ) from error
    validate(payload, path)
    return payload


def load_or_empty(folder: str | Path, contract: InputContract = FASHION_MNIST) -> dict[str, Any]:
    return load(folder) if path_in(Path(folder)).is_file() else empty(contract)


def validate(payload: Any, path: Path) -> None:
    if not isinstance(payload, dict):
        raise errors.ManifestError(f"{path} is not a JSON object. Regenerate it with `edgekit export`.")
    _require(payload, REQUIRED_TOP, str(path))
    if payload["schema_version"] not in READABLE_SCHEMAS:
        raise errors.ManifestError(
            f"{path} has schema version {payload['schema_version']!r}; this edgekit reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))}. Regenerate it with this version's "
            "`edgekit export`."
        )
    if not isinstance(payload["input"], dict) or not isinstance(payload["labels"], list):
        raise errors.ManifestError(f"{path}: 'input' must be an object and 'labels' a list.")
    if not isinstance(payload["artifacts"], list):
        raise errors.ManifestError(f"{path}: 'artifacts' must be a list.")
    for index, entry in enumerate(payload["artifacts"]):
        if not isinstance(entry, dict):
            raise errors.ManifestError(f"{path}: artifact {index} is not an object.")
        _require(entry, REQUIRED_ARTIFACT, f"{path}: artifact {entry.get('file', index)!r}")
        safe_file(path.parent, entry["file"])


def _require(mapping: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise errors.ManifestError(
            f"{where} lacks {', '.join(missing)}. Regenerate it with `edgekit export`.")


def safe_file(folder: Path, name: Any) -> Path:
    """Resolve a manifest ``file`` entry, refusing anything outside ``folder``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise errors.ManifestError(
            f"manifest entry file {name!r} is not a plain file name inside {folder}; refusing it."
        )
    resolved = (folder / name).resolve()
    if resolved.parent != Path(folder).resolve():
        raise errors.ManifestError(f"manifest entry file {name!r} points outside {folder}; refusing it.")
    return resolved


def save(folder: str | Path, payload: dict[str, Any]) -> Path:
    validate(payload, path_in(Path(folder)))
    return fileio.write_json(path_in(Path(folder)), payload)


def find_artifact(payload: dict[str, Any], file_name: str) -> dict[str, Any] | None:
    for entry in payload["artifacts"]:
        if entry["file"] == file_name:
            return entry
    return None


def upsert_artifact(payload: dict[str, Any], entry: dict[str, Any]) -> None:
    """Replace the entry with the same file name, or append; keeps a stable order."""
    for index, existing in enumerate(payload["artifacts"]):
        if existing["file"] == entry["file"]:
            payload["artifacts"][index] = entry
            return
    payload["artifacts"].append(entry)
