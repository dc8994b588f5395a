"""Errors as JSON, and the upload-size guard FastAPI does not have (fastapi/fastapi#362).

Every refusal is ``{"error": <code>, "detail": <what went wrong and what to do>}`` with a 4xx
status. :class:`BodyLimit` answers 413 before the body is read: at once when ``Content-Length``
declares too much, else as soon as the bytes streamed in pass the limit (a chunked upload, or
a client that lies); the rest of the body is never read, and uvicorn closes that connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOTE_KEY = "edgekit.note"  # the scope entry the request log line reads
CLIENT_CLOSED = 499  # nginx's status for "client closed request": logged, never sent

log = logging.getLogger("edgekit.serve")


class ApiError(Exception):
    """A request the server refuses: becomes a JSON error with ``status``."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


class ClientGone(Exception):
    """The client closed the connection before its request was read in full."""


def error_response(scope: Scope, status: int, code: str, detail: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error for ``scope``'s request; its log line will carry ``code: detail``."""
    scope[NOTE_KEY] = f"{code}: {detail}"
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def log_request(scope: Scope, status: int, started: float) -> None:
    """The request's one log line: client, method, path, status, ms and the note, if any."""
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client") or ("-", 0)
    note = scope.get(NOTE_KEY)
    # A record made directly: Logger.info would also look up its caller's file and line,
    # which this line does not show, once per request.
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s %s %s %d %.1f ms%s",
                              (client[0], scope["method"], scope["path"], status,
                               (time.perf_counter() - started) * 1000, f"  {note}" if note else ""),
                              None))


def too_large(scope: Scope, limit: int, size: str) -> JSONResponse:
    error = upload_too_large(limit, size)
    return error_response(scope, error.status, error.code, error.detail)


def upload_too_large(limit: int, size: str) -> ApiError:
    return ApiError(413, "upload_too_large",
                    f"the request body is {size}, over this server's limit of "
                    f"{limit / (1024 * 1024):g} MiB (--max-upload-mb); send a smaller image.")


BAD_CONTENT_LENGTH = ApiError(400, "bad_content_length", "the Content-Length header is not a number.")


class UploadTooLarge(Exception):
    """Raised from ``receive`` when the streamed body passes the limit."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` before reading them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared == -1:
            await error_response(scope, BAD_CONTENT_LENGTH.status, BAD_CONTENT_LENGTH.code,
                                 BAD_CONTENT_LENGTH.detail)(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await too_large(scope, self.max_bytes, f"{declared:,} bytes")(scope, receive, send)
            return
        received = 0
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except UploadTooLarge:
            if response_started:
                raise
            await too_large(scope, self.max_bytes,
                            f"more than {self.max_bytes:,} bytes")(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    """The declared body size; None when absent, -1 when unreadable."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                size = int(value)
            except ValueError:
                return -1
            return size if size >= 0 else -1
    return None
