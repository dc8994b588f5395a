"""Run an app under uvicorn on a socket of our own, and stop cleanly.

The socket is bound before uvicorn starts, so ``--port 0`` gets a free port and the printed URL
names it. uvicorn handles SIGINT and SIGTERM itself: it stops accepting, lets in-flight requests
finish (up to ``GRACEFUL_SECONDS``), runs the app's shutdown (the model thread drains), and
then raises the signal again for whoever handled it before — edgekit's CLI turns that into a
KeyboardInterrupt, which :func:`run` takes as the end of a clean stop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import signal
import socket
import sys
import types
from typing import Any

import uvicorn

GRACEFUL_SECONDS = 30


class _Server(uvicorn.Server):
    """uvicorn's server, remembering which signal stopped it."""

    stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        self.stop_signal = self.stop_signal or sig
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP
    # (base_events._set_nodelay), and accepted sockets inherit it. With proto 0, Nagle's
    # algorithm holds each response's body behind its headers until the client's delayed ACK:
    # 40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class SecondsFormatter(logging.Formatter):
    """``HH:MM:SS message``; the time is formatted once per second, not once per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, super().formatTime(record, datefmt)
        return self._text


def configure_logging() -> None:
    """Request lines and uvicorn's own warnings to stderr, one line each, with the time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SecondsFormatter())
    for name in ("edgekit.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("edgekit.serve").setLevel(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


class CoalescingTransport:
    """A connection's transport whose writes in one pass of the event loop leave as one.

    uvicorn writes a response's head and its body separately, and each write to a TCP socket
    is a system call and a segment for the client to be woken for; on loopback the sender pays
    for the receiver's side too. Writes are gathered and sent by a callback scheduled after
    the first, at the end of the loop's current pass (so the responses finished in one pass
    also leave together); closing sends what is gathered first. Everything else is the
    transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        # uvicorn's flow control calls these per request: bound once, not looked up each time
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        chunks, self._chunks = self._chunks, []
        if chunks and not self._transport.is_closing():
            self._transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


HTTPTOOLS = importlib.util.find_spec("httptools") is not None

if HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol  # noqa: E402

    class JsonErrorsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol answering malformed HTTP with the server's JSON error
        shape, its writes coalesced (:class:`CoalescingTransport`). Defined at module level:
        worker processes get uvicorn's settings, this class among them, pickled by name.

        A request uvicorn cannot parse never reaches the app: uvicorn answers it with a
        plain-text 400 itself (``send_400_response``, and a warning line in its log). Same
        status, same closing of the connection, but the body every other refusal has.
        """

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": "bad_http", "detail": f"{msg} (not a well-formed HTTP/1.1 "
                                                              "request)"}).encode()
            content = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: application/json\r\n",
                            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                            b"connection: close\r\n", b"\r\n", body])
            self.transport.write(b"".join(content))
            self.transport.close()


def json_http_protocol() -> type | str:
    """:class:`JsonErrorsProtocol`; without httptools, uvicorn's own choice ("auto") and its
    plain-text 400."""
    return JsonErrorsProtocol if HTTPTOOLS else "auto"


def uvicorn_config(app: Any, **settings: Any) -> uvicorn.Config:
    """uvicorn's settings for edgekit serve (``app`` an app, or an import string with
    ``factory=True`` in ``settings``)."""
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False,
                          http=json_http_protocol(), **settings)  # type: ignore[arg-type]


def run(app: Any, sock: socket.socket) -> str | None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM; return that signal's name."""
    server = _Server(uvicorn_config(app))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # the signal uvicorn raised again after its graceful stop (see the module doc)
    finally:
        sock.close()
    if server.stop_signal is None:
        return None
    return signal.Signals(server.stop_signal).name
