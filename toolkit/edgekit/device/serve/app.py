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

import fastapi.openapi.utils
import fastapi.routing
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edgekit import __version__
from edgekit.device import images
from edgekit.device.serve import page, schemas, uploads
from edgekit.device.serve import predict as predict_module
from edgekit.device.serve.batching import MicroBatcher
from edgekit.device.serve.config import DEFAULT_TOP_K, ServeConfig
from edgekit.device.serve.decoding import Decoder
from edgekit.device.serve.limits import ApiError, BodyLimit, Receive, Scope, Send, error_response, log_request
from edgekit.device.serve.predict import PredictEndpoint
from edgekit.device.serve.served import ServedModel

log = logging.getLogger("edgekit.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse} for status in (400, 413, 415, 422, 429, 503)}


@dataclasses.dataclass
class ServerState:
    served: ServedModel
    config: ServeConfig
    batcher: MicroBatcher
    decoder: Decoder
    ready: bool = False
    failure: str | None = None

    def not_ready(self) -> str | None:
        """None once the warm-up call succeeded; else what to tell a client."""
        if self.ready:
            return None
        return self.failure or "the model is warming up; retry in a moment (GET /healthz says when)."


class EdgekitApp:
    """The server: ``POST /v1/predict`` on its lean path (:mod:`.predict`), the rest FastAPI's."""

    def __init__(self, api: FastAPI, predict: PredictEndpoint) -> None:
        self.api = api
        self.predict = predict
        self.state: ServerState = api.state.edgekit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == predict_module.PATH:
            await self.predict(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(served: ServedModel, config: ServeConfig) -> EdgekitApp:
    batcher = MicroBatcher(served.model.predict, config.max_batch, config.batch_wait_ms / 1000)
    decoder = Decoder(served.model.contract, config.decode_budget_pixels, config.decode_wait_s)
    state = ServerState(served, config, batcher, decoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        warming = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warming.cancel()
            await run_in_threadpool(batcher.close, 30)
            await run_in_threadpool(decoder.close)

    api = FastAPI(title="edgekit serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # FastAPI's docs pages load scripts from a CDN
                  description=f"{served.name}: an image classifier exported and verified by "
                              "edgekit. The schema is at /openapi.json; the page at /.")
    api.state.edgekit = state
    api.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)  # type: ignore[arg-type]
    api.add_middleware(RequestLog, enabled=config.log_requests)  # type: ignore[arg-type]
    _add_error_handlers(api)
    _add_routes(api, state)
    _document_predict(api)
    return EdgekitApp(api, PredictEndpoint(served, config, batcher, decoder, state.not_ready))


async def _warm_up(state: ServerState) -> None:
    shape = (1, *state.served.model.contract.shape)
    try:
        await state.batcher.submit(np.zeros(shape, dtype=np.uint8))
    except Exception as error:  # the server stays up and says so on /healthz
        state.failure = f"the warm-up call failed: {error}"
        log.error("%s: %s", state.served.name, state.failure)
        return
    state.ready = True


def _predict_operation(
        top_k: int = Query(DEFAULT_TOP_K, ge=1, le=predict_module.MAX_TOP_K,  # noqa: B008
                           description="how many classes to list (at most all)"),
        prepared: bool = Query(False, description="also return the model's input "  # noqa: B008
                                                  "as a PNG data URL")) -> None:
    """Classify one or more images (multipart field ``image``, repeated; or a raw body)."""


def _document_predict(api: FastAPI) -> None:
    """Put ``POST /v1/predict`` into the OpenAPI schema.

    Requests to it never reach FastAPI (:class:`EdgekitApp` routes them to the lean handler),
    so its operation is described by a route that is not routed: FastAPI's own schema
    generator documents its parameters, body and answers as for any other route.
    """
    operation = fastapi.routing.APIRoute(
        predict_module.PATH, _predict_operation, methods=["POST"], name="predict",
        responses={200: {"model": schemas.PredictResponse}, **ERRORS},
        openapi_extra={"requestBody": REQUEST_BODY})

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = fastapi.openapi.utils.get_openapi(
                title=api.title, version=api.version, description=api.description,
                routes=[*api.routes, operation])
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _add_routes(app: FastAPI, state: ServerState) -> None:
    served = state.served

    @app.get("/v1/model", response_model=schemas.ModelInfo)
    async def model_info() -> dict[str, Any]:
        """The artifact, its input contract and its parity record from the manifest."""
        config = state.config
        policy = state.batcher.policy
        return {**served.describe(),
                "limits": {"max_upload_bytes": config.max_upload_bytes,
                           "max_images": config.max_images, "max_pixels": images.MAX_PIXELS,
                           "decode_budget_pixels": config.decode_budget_pixels,
                           "decode_wait_s": config.decode_wait_s},
                "batching": {"max_batch": config.max_batch, "wait_ms": config.batch_wait_ms,
                             "batches": state.batcher.batches, "images": state.batcher.images,
                             "queued_together": "one call" if policy.batching else "one call each",
                             "model_ms_per_image": {
                                 "one_call": _ms(policy.cost[True]),
                                 "one_call_each": _ms(policy.cost[False])}}}

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


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request.scope, error.status, error.code, error.detail, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        # Starlette's 405 names the allowed methods in its headers (RFC 9110 15.5.6: Allow)
        return error_response(request.scope, error.status_code, code, str(error.detail), error.headers)

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
            log_request(scope, status, started)


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
