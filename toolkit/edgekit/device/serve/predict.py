"""``POST /v1/predict`` as a plain ASGI handler, below FastAPI's routing and validation.

For a model that takes a fraction of a millisecond the HTTP stack is most of a request, so the
one endpoint that carries load is answered here directly: the query string and the body are
read from the ASGI messages (:mod:`.uploads`, :mod:`.multipart`), images are decoded by pixel
count within a pixel budget (:mod:`.decoding`), the pixels go to the model thread
(:mod:`.batching`), and the answer is one ``orjson.dumps`` (the standard library's ``json``
where orjson is not installed: the same values, in ten times the time). The other endpoints stay FastAPI's
(:mod:`.app`). Every refusal is the same JSON error, and every request one log line: a client
that disconnects before its request is read is logged as 499 (nginx's "client closed
request") and gets no answer, as it is gone.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - the serve extra installs orjson
    _orjson_dumps = None  # type: ignore[assignment]

from edgekit.device.serve import uploads
from edgekit.device.serve.batching import BatcherClosed, BatchResult, MicroBatcher
from edgekit.device.serve.config import DEFAULT_TOP_K, ServeConfig
from edgekit.device.serve.decoding import Decoder
from edgekit.device.serve.limits import (
    CLIENT_CLOSED,
    NOTE_KEY,
    ApiError,
    ClientGone,
    Receive,
    Scope,
    Send,
    log,
    log_request,
)
from edgekit.device.serve.served import ServedModel, image_result

PATH = "/v1/predict"
MAX_TOP_K = 1000
TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})  # what FastAPI's bool query accepts
FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictEndpoint:
    """The ASGI app for ``POST /v1/predict`` (the caller routes only that path here)."""

    def __init__(self, served: ServedModel, config: ServeConfig, batcher: MicroBatcher,
                 decoder: Decoder, ready: Callable[[], str | None]) -> None:
        self.served = served
        self.config = config
        self.batcher = batcher
        self.decoder = decoder
        self.not_ready = ready  # None when ready, else why not
        self.classes = served.model.contract.num_classes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            if scope["method"] != "POST":
                raise ApiError(405, "method_not_allowed", "Method Not Allowed", headers={"Allow": "POST"})
            answer = await self._answer(scope, receive, started)
        except ClientGone:
            scope[NOTE_KEY] = "client closed request (disconnected before its request was read)"
            self._log(scope, CLIENT_CLOSED, started)
            return
        except ApiError as error:
            scope[NOTE_KEY] = f"{error.code}: {error.detail}"
            body = json.dumps({"error": error.code, "detail": error.detail}).encode()
            headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                       for name, value in error.headers.items()]
            await _send(send, error.status, body, headers)
            self._log(scope, error.status, started)
            return
        except Exception:  # a fault of the server's own (a model call that raised): say so, once
            log.exception("%s %s failed", scope["method"], scope["path"])
            scope[NOTE_KEY] = "internal_error"
            await _send(send, 500, b'{"error":"internal_error","detail":"the server failed on this '
                                   b'request; its log says why."}')
            self._log(scope, 500, started)
            return
        await _send(send, 200, _dumps(answer))
        self._log(scope, 200, started)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        if self.config.log_requests:
            log_request(scope, status, started)

    async def _answer(self, scope: Scope, receive: Receive, started: float) -> dict[str, Any]:
        top_k, prepared = _query(scope.get("query_string", b""))
        reason = self.not_ready()
        if reason is not None:
            raise ApiError(503, "not_ready", reason)
        contract = self.served.model.contract
        with self.batcher.arrival() as arrival:
            parts = await uploads.read_images(scope, receive, self.config.max_images,
                                              self.config.max_upload_bytes)
            read = time.perf_counter()
            items, prepare_seconds = [], []
            for part in parts:  # one after another: a request holds one decode at a time
                begun = time.perf_counter()
                items.append(await self.decoder.prepare(part))
                prepare_seconds.append(time.perf_counter() - begun)
            pixels = items[0].pixels[None] if len(items) == 1 else np.stack([i.pixels for i in items])
            prepared_at = time.perf_counter()  # before the model: a call on the loop is "model"
            size = self.batcher.max_batch
            # A short model call is made on the loop with the requests ready in the same pass;
            # a long one (or a request of more images than a call takes) goes to the model thread.
            gathered = arrival.gather(pixels) if len(pixels) <= size else None
            try:
                pending = [gathered] if gathered is not None else [
                    arrival.submit(pixels[start:start + size]) for start in range(0, len(pixels), size)]
            except BatcherClosed:
                raise ApiError(503, "stopping", "the server is stopping; retry on another.") from None
        try:
            outcomes: list[BatchResult] = (
                [await pending[0]] if len(pending) == 1 else await asyncio.gather(*pending))
        except BatcherClosed:
            raise ApiError(503, "stopping", "the server is stopping; retry on another.") from None
        probabilities = (outcomes[0].probabilities if len(outcomes) == 1
                         else np.concatenate([outcome.probabilities for outcome in outcomes]))
        model_ms = sum(outcome.model_seconds for outcome in outcomes) * 1000
        top_k = min(top_k, self.classes)
        results = []
        for item, row, seconds in zip(items, probabilities, prepare_seconds, strict=True):
            result = image_result(contract.labels, item, row, top_k, prepared)
            result["time_ms"] = {"prepare": seconds * 1000, "model": model_ms}
            results.append(result)
        finished = time.perf_counter()
        best = results[0]
        count = len(results)
        scope[NOTE_KEY] = (f"{count} image{'s' if count > 1 else ''}: {best['label']} "
                           f"({best['probability']:.1%})" + (" ..." if count > 1 else ""))
        return {"model": self.served.name, "results": results,
                "batch_images": max(outcome.batch_images for outcome in outcomes),
                "time_ms": {"read": (read - started) * 1000, "prepare": (prepared_at - read) * 1000,
                            "queue": max((finished - prepared_at) * 1000 - model_ms, 0.0),
                            "model": model_ms, "total": (finished - started) * 1000}}


def _dumps(answer: dict[str, Any]) -> bytes:
    return _orjson_dumps(answer) if _orjson_dumps is not None else \
        json.dumps(answer, separators=(",", ":")).encode()


def _query(query_string: bytes) -> tuple[int, bool]:
    """``top_k`` (1..1000, default 3) and ``prepared`` (a boolean), strictly."""
    top_k, prepared = DEFAULT_TOP_K, False
    if not query_string:
        return top_k, prepared
    for name, value in urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "top_k":
            if not value.strip().lstrip("+-").isdigit() or not 1 <= int(value) <= MAX_TOP_K:
                raise ApiError(422, "invalid_parameter",
                               f"query.top_k: {value!r} is not a whole number from 1 to {MAX_TOP_K}")
            top_k = int(value)
        elif name == "prepared":
            if value.lower() not in TRUE | FALSE:
                raise ApiError(422, "invalid_parameter", f"query.prepared: {value!r} is not true or false")
            prepared = value.lower() in TRUE
    return top_k, prepared


async def _send(send: Send, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or ())]})
    await send({"type": "http.response.body", "body": body})
