"""The images of one request: multipart field ``image`` (one or more), or a raw image body.

Read straight from the ASGI ``receive`` channel, within the upload limit: 413 before anything
is read when ``Content-Length`` declares too much, else the moment the bytes streamed in pass
it (a chunked upload, or a client that lies). The multipart body is parsed as it arrives
(:mod:`.multipart`) and refused at the first ``image`` part over the limit, before the rest is
read. A client that disconnects midway raises :class:`ClientGone`.
"""

from __future__ import annotations

from edgekit.device.serve import multipart
from edgekit.device.serve.limits import (
    BAD_CONTENT_LENGTH,
    ApiError,
    ClientGone,
    Receive,
    Scope,
    content_length,
    upload_too_large,
)
from edgekit.device.serve.multipart import Part

FIELD = "image"
RAW_TYPES = (b"application/octet-stream",)  # besides image/*
HOW_TO_SEND = ("send the image as multipart field 'image' (curl -F image=@shirt.png) or as the "
               "raw body with its image Content-Type (curl --data-binary @shirt.png -H "
               "'Content-Type: image/png')")


def header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:  # ASGI servers give header names in lower case
            return bytes(value)
    return b""


async def read_images(scope: Scope, receive: Receive, max_images: int, max_bytes: int) -> list[Part]:
    """The request's images as bytes; :class:`ApiError` for anything else."""
    content_type = header(scope, b"content-type")
    media_type = content_type.split(b";")[0].strip().lower()
    if media_type == b"multipart/form-data":
        parts = await _read_multipart(scope, receive, content_type, max_images, max_bytes)
    elif media_type.startswith(b"image/") or media_type in RAW_TYPES:
        parts = [Part("image 1", await _read_body(scope, receive, max_bytes))]
    else:
        shown = media_type.decode("latin-1") or "no Content-Type"
        raise ApiError(415, "unsupported_media_type", f"{shown} is not an image upload; {HOW_TO_SEND}.")
    if not parts:
        raise ApiError(400, "no_image", f"the form has no field '{FIELD}'; {HOW_TO_SEND}.")
    for part in parts:
        if not part.data:
            raise ApiError(400, "empty_image", f"{part.name} is empty (0 bytes); {HOW_TO_SEND}.")
    return parts


class _Body:
    """The body's chunks as they arrive, counted against the upload limit."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int) -> None:
        declared = content_length(scope)
        if declared == -1:
            raise BAD_CONTENT_LENGTH
        if declared is not None and declared > max_bytes:
            raise upload_too_large(max_bytes, f"{declared:,} bytes")  # nothing of it is read
        self._receive = receive
        self._max_bytes = max_bytes
        self.received = 0
        self.more = True

    async def next_chunk(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        self.received += len(chunk)
        if self.received > self._max_bytes:
            raise upload_too_large(self._max_bytes, f"more than {self._max_bytes:,} bytes")
        self.more = bool(message.get("more_body", False))
        return chunk


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    body = _Body(scope, receive, max_bytes)
    first = await body.next_chunk()
    if not body.more:
        return first  # the whole body in one message: no copy
    chunks = [first]
    while body.more:
        chunks.append(await body.next_chunk())
    return b"".join(chunks)


async def _read_multipart(scope: Scope, receive: Receive, content_type: bytes, max_images: int,
                          max_bytes: int) -> list[Part]:
    boundary = multipart.boundary_of(content_type)
    if not boundary:
        raise ApiError(400, "bad_multipart", "the multipart Content-Type has no boundary.")
    body = _Body(scope, receive, max_bytes)
    try:
        reader = multipart.MultipartReader(boundary, FIELD, max_images)
        while body.more:
            reader.feed(await body.next_chunk())
    except multipart.MultipartError as error:
        raise ApiError(400, "bad_multipart", f"the multipart body is malformed: {error}.") from None
    except multipart.TooManyParts:
        raise ApiError(413, "too_many_images",
                       f"more than {max_images} images in one request (--max-images); "
                       "send them in several requests.") from None
    if not reader.ended:
        raise ApiError(400, "bad_multipart", "the multipart body ends before its closing boundary.")
    return reader.parts
