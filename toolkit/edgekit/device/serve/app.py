"""The ASGI app: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, the page at ``/``.

Built by :func:`create_app` around a model already checked against its release
(:func:`edgekit.device.serve.served.open_model`). Start-up warms the model up in the
background: ``/healthz`` answers 503 until that call succeeded, then 200. Every refusal is a
JSON error (:mod:`.limits`) and one log line; nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edgekit import __version__, errors
from edgekit.device import images
from edgekit.device.serve import page, schemas, uploads
from edgekit.device.serve.batching import BatcherClosed, BatchResult, MicroBatcher
from edgekit.device.serve.config import DEFAULT_TOP_K, ServeConfig
from edgekit.device.serve.limits import NOTE_KEY, ApiError, BodyLimit, Receive, Scope, Send, error_response
from edgekit.device.serve.served import ServedModel, image_result

log = logging.getLogger("edgekit.serve")

# Uploads above this are decoded in a worker thread (Pillow releases the GIL), so a large
# picture does not hold up every other request; small ones are decoded inline, where a
# thread hop would cost more than the decoding.
INLINE_DECODE_BYTES = 256 * 1024

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse} for status in (400, 413, 415, 422, 503)}


@dataclasses.dataclass
class ServerState:
    served: ServedModel
    config: ServeConfig
    batcher: MicroBatcher
    ready: bool = False
    failure: str | None = None


def create_app(served: ServedModel, config: ServeConfig) -> FastAPI:
    batcher = MicroBatcher(served.model.predict, config.max_batch, config.batch_wait_ms / 1000)
    state = ServerState(served, config, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        warming = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warming.cancel()
            await run_in_threadpool(batcher.close, 30)

    app = FastAPI(title="edgekit serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # FastAPI's docs pages load scripts from a CDN
                  description=f"{served.name}: an image classifier exported and verified by "
                              "edgekit. The schema is at /openapi.json; the page at /.")
    app.state.edgekit = state
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)  # type: ignore[arg-type]
    app.add_middleware(RequestLog, enabled=config.log_requests)  # type: ignore[arg-type]
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


async def _warm_up(state: ServerState) -> None:
    shape = (1, *state.served.model.contract.shape)
    try:
        await state.batcher.submit(np.zeros(shape, dtype=np.uint8))
    except Exception as error:  # the server stays up and says so on /healthz
        state.failure = f"the warm-up call failed: {error}"
        log.error("%s: %s", state.served.name, state.failure)
        return
    state.ready = True


def _add_routes(app: FastAPI, state: ServerState) -> None:
    served = state.served
    classes = served.model.contract.num_classes

    @app.post("/v1/predict", responses={200: {"model": schemas.PredictResponse}, **ERRORS},
              openapi_extra={"requestBody": REQUEST_BODY})
    async def predict(request: Request,
                      top_k: int = Query(DEFAULT_TOP_K, ge=1, le=1000,
                                         description="how many classes to list (at most all)"),
                      prepared: bool = Query(False, description="also return the model's input "
                                                                "as a PNG data URL")) -> JSONResponse:
        """Classify one or more images (multipart field ``image``, repeated; or a raw body)."""
        if not state.ready:
            raise ApiError(503, "not_ready", state.failure or "the model is warming up; retry in a "
                                                              "moment (GET /healthz says when).")
        answer = await _predict(state, request, min(top_k, classes), prepared)
        best = answer["results"][0]
        count = len(answer["results"])
        request.scope[NOTE_KEY] = (f"{count} image{'s' if count > 1 else ''}: {best['label']} "
                                   f"({best['probability']:.1%})" + (" ..." if count > 1 else ""))
        return JSONResponse(answer)

    @app.get("/v1/model", response_model=schemas.ModelInfo)
    async def model_info() -> dict[str, Any]:
        """The artifact, its input contract and its parity record from the manifest."""
        config = state.config
        return {**served.describe(),
                "limits": {"max_upload_bytes": config.max_upload_bytes,
                           "max_images": config.max_images, "max_pixels": images.MAX_PIXELS},
                "batching": {"max_batch": config.max_batch, "wait_ms": config.batch_wait_ms,
                             "batches": state.batcher.batches, "images": state.batcher.images}}

    @app.get("/healthz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    async def healthz() -> JSONResponse:
        """200 once the model is loaded and a warm-up call succeeded; 503 before (or if it failed)."""
        if state.ready:
            return JSONResponse({"status": "ok", "model": served.name})
        status = "failed" if state.failure else "starting"
        return JSONResponse({"status": status, "model": served.name, "detail": state.failure},
                            status_code=503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.HTML, headers={"Content-Security-Policy": page.CONTENT_SECURITY_POLICY})


async def _predict(state: ServerState, request: Request, top_k: int, prepared: bool) -> dict[str, Any]:
    contract = state.served.model.contract
    started = time.perf_counter()
    with state.batcher.arrival() as arrival:
        received = await uploads.read_images(request, state.config.max_images)
        read = time.perf_counter()
        items, prepare_seconds = [], []
        for upload in received:
            begun = time.perf_counter()
            if len(upload.data) > INLINE_DECODE_BYTES:
                item = await run_in_threadpool(_prepare, upload, contract)
            else:
                item = _prepare(upload, contract)
            items.append(item)
            prepare_seconds.append(time.perf_counter() - begun)
        pixels = np.stack([item.pixels for item in items])
        size = state.config.max_batch
        try:
            pending = [arrival.submit(pixels[start:start + size])
                       for start in range(0, len(pixels), size)]
        except BatcherClosed:
            raise ApiError(503, "stopping", "the server is stopping; retry on another.") from None
    prepared_at = time.perf_counter()
    outcomes: list[BatchResult] = await asyncio.gather(*pending)
    probabilities = np.concatenate([outcome.probabilities for outcome in outcomes])
    model_ms = sum(outcome.model_seconds for outcome in outcomes) * 1000
    results = []
    for item, row, seconds in zip(items, probabilities, prepare_seconds, strict=True):
        result = image_result(contract.labels, item, row, top_k, prepared)
        result["time_ms"] = {"prepare": seconds * 1000, "model": model_ms}
        results.append(result)
    finished = time.perf_counter()
    queue_ms = (finished - prepared_at) * 1000 - model_ms
    return {"model": state.served.name, "results": results,
            "batch_images": max(outcome.batch_images for outcome in outcomes),
            "time_ms": {"read": (read - started) * 1000, "prepare": (prepared_at - read) * 1000,
                        "queue": max(queue_ms, 0.0), "model": model_ms,
                        "total": (finished - started) * 1000}}


def _prepare(upload: uploads.Upload, contract: Any) -> images.PreparedImage:
    try:
        return images.prepare_bytes(upload.data, upload.name, contract)
    except errors.ImageError as error:
        raise ApiError(422, "not_an_image", str(error)) from None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request.scope, error.status, error.code, error.detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request.scope, error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                             for problem in error.errors())
        return error_response(request.scope, 422, "invalid_parameter", problems)


class RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, ms, note)."""

    def __init__(self, app: Any, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            client = scope.get("client") or ("-", 0)
            note = scope.get(NOTE_KEY)
            log.info("%s %s %s %d %.1f ms%s", client[0], scope["method"], scope["path"], status,
                     (time.perf_counter() - started) * 1000, f"  {note}" if note else "")


REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [uploads.FIELD],
            "properties": {uploads.FIELD: {"type": "array",
                                           "items": {"type": "string", "format": "binary"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
