"""The yardstick: the simplest FastAPI endpoint over ``edgekit.runtime``, one call per request.

What one would write by hand: FastAPI's own ``UploadFile`` parsing, the same image preparation,
``model.predict`` on the event loop (an ``async`` endpoint: a plain ``def`` one would run in
Starlette's thread pool, calling one LiteRT interpreter from several threads at once, which it
does not allow), and FastAPI's default JSON encoding. No batching, no limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, UploadFile

from edgekit.device import images, runtime


def create_app(model_path: Path, threads: int | None = None) -> FastAPI:
    model = runtime.load(model_path, threads=threads)
    app = FastAPI(title="per-request baseline", docs_url=None, redoc_url=None)

    @app.post("/v1/predict")
    async def predict(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        prepared = images.prepare_bytes(await image.read(), image.filename or "image", model.contract)
        probabilities = model.predict(prepared.pixels[None])[0]
        best = int(probabilities.argmax())
        return {"label": model.labels[best], "probabilities": probabilities.tolist()}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
