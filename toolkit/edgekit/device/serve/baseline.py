"""The yardstick: the server a user would write instead of ``edgekit serve``, in ten lines.

FastAPI with one ``async def`` endpoint taking the upload as ``UploadFile`` field ``image``,
Pillow decoding it (through the release's own preparation, so its answers are right),
``edgekit.runtime``'s model called per request, the label returned; run on uvicorn with its
defaults (access log on, httptools and uvloop when installed), one process. ``async def``
because a plain ``def`` endpoint runs in Starlette's thread pool, calling one LiteRT
interpreter from several threads at once, which it does not allow. No limits, no batching.
"""

from __future__ import annotations

import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI, UploadFile

from edgekit.device import images, runtime


def create_app(model_path: Path) -> FastAPI:
    model = runtime.load(model_path)
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(image: UploadFile) -> dict[str, str]:
        prepared = images.prepare_bytes(await image.read(), image.filename or "image", model.contract)
        probabilities = model.predict(prepared.pixels[None])[0]
        return {"label": model.labels[int(probabilities.argmax())]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run(app: FastAPI, sock: socket.socket) -> None:
    """``uvicorn.run(app)``'s defaults, on a socket already bound (so the port is known)."""
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[sock])
