"""The model a server answers with, checked against its release, and the shape of one answer."""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit import errors
from edgekit import manifest as manifest_module
from edgekit.device import runtime
from edgekit.device.images import PreparedImage


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded artifact with the manifest entry that vouches for it."""

    model: runtime.LoadedModel
    entry: dict[str, Any]  # the artifact's manifest entry: file, precision, sha256, metrics, ...
    release: Path

    @property
    def name(self) -> str:
        return str(self.entry["file"])

    def describe(self) -> dict[str, Any]:
        """``GET /v1/model``: what runs, the input contract, and its parity record."""
        return {
            "file": self.name,
            "release": str(self.release),
            "format": self.entry["format"],
            "precision": self.entry["precision"],
            "bytes": self.entry["bytes"],
            "sha256": self.entry["sha256"],
            "labels": list(self.model.labels),
            "contract": self.model.contract.to_dict(),
            "tensors": self.model.describe(),
            "metrics": self.entry.get("metrics", {}),
        }


def open_model(path: Path, threads: int | None = None) -> ServedModel:
    """Load ``path`` for serving: it must be listed in the manifest of its own folder (the
    release), and its sha256 must match that entry (``runtime.load`` checks it)."""
    path = Path(path)
    release = path.parent
    manifest = manifest_module.load(release)
    entry = manifest_module.find_artifact(manifest, path.name)
    if entry is None:
        listed = ", ".join(str(artifact["file"]) for artifact in manifest["artifacts"]) or "none"
        raise errors.ModelError(
            f"{path.name} is not listed in {manifest_module.path_in(release)} (listed: {listed}). "
            "edgekit serve runs only a release's own artifacts; create them with `edgekit export`.")
    manifest_module.safe_file(release, entry["file"])
    return ServedModel(runtime.load(path, threads=threads, verify_sha256=True), entry, release)


def top_classes(labels: tuple[str, ...], row: np.ndarray, count: int) -> list[dict[str, Any]]:
    """The ``count`` most probable classes, best first (full float32 probabilities)."""
    best = np.argsort(-row, kind="stable")[:count]  # ties keep label order
    return [{"label": labels[index], "class": int(index), "probability": float(row[index])}
            for index in best]


def image_result(labels: tuple[str, ...], prepared: PreparedImage, row: np.ndarray, top_k: int,
                 with_pixels: bool) -> dict[str, Any]:
    """One image's answer, in the shape of ``edgekit predict --json`` plus every probability.

    ``probabilities`` are the float32 values as JSON numbers (``tolist`` widens each one to the
    float64 holding exactly that value), in label order.
    """
    predictions = top_classes(labels, row, top_k)
    result: dict[str, Any] = {
        "image": str(prepared.path),
        "label": predictions[0]["label"],
        "class": predictions[0]["class"],
        "probability": predictions[0]["probability"],
        "predictions": predictions,
        "probabilities": row.tolist(),
        "preprocessing": prepared.steps,
    }
    if with_pixels:
        result["prepared_png"] = png_data_url(prepared.pixels)
    return result


def png_data_url(pixels: np.ndarray) -> str:
    """The prepared input as the model sees it, as a ``data:image/png`` URL."""
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    stream = io.BytesIO()
    picture.save(stream, format="PNG")
    return "data:image/png;base64," + base64.b64encode(stream.getvalue()).decode("ascii")
