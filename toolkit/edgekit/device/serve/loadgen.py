"""A small HTTP/1.1 load generator: keep-alive connections, closed loop, nothing else.

Each client owns one connection and sends its next request when the last answer is in (a
closed loop: ``clients`` requests in flight). It speaks just enough HTTP for this server —
requests built once as bytes, answers read by ``Content-Length`` — so the measuring process
spends microseconds per request, not the milliseconds a full client library would take from
the same two cores the server runs on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import itertools
import re
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

CONTENT_LENGTH = re.compile(rb"\r\n[Cc]ontent-[Ll]ength: *(\d+)")
T = TypeVar("T")


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run the clients on uvloop where it is installed (the serve extra installs it): the
    measuring process then takes less of the CPUs it shares with the servers it measures."""
    if importlib.util.find_spec("uvloop") is None:
        return asyncio.run(work)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


@dataclasses.dataclass(frozen=True)
class Reply:
    index: int  # which of the requests was sent
    status: int
    body: bytes
    seconds: float  # from the first byte sent to the last byte received


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])  # "HTTP/1.1 200 ..."
        found = CONTENT_LENGTH.search(head)
        return status, await self.reader.readexactly(int(found.group(1)) if found else 0)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def get_request(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")


def multipart_request(host: str, port: int, path: str, image: bytes, name: str) -> bytes:
    """``POST path`` with one multipart field ``image`` (as ``curl -F image=@name``)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


async def closed_loop(host: str, port: int, requests: list[bytes], clients: int,
                      total: int) -> tuple[list[Reply], float]:
    """Send ``total`` requests (cycling through ``requests``) from ``clients`` connections.

    Returns every reply and the wall-clock seconds from the first request to the last answer.
    """
    counter = itertools.count()
    replies: list[Reply] = []

    async def client(connection: Connection) -> None:
        while (index := next(counter)) < total:
            request = requests[index % len(requests)]
            started = time.perf_counter()
            status, body = await connection.send(request)
            replies.append(Reply(index % len(requests), status, body, time.perf_counter() - started))

    connections = [await Connection.open(host, port) for _ in range(clients)]
    try:
        started = time.perf_counter()  # connections are open: the clock times requests only
        await asyncio.gather(*(client(connection) for connection in connections))
        return replies, time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
