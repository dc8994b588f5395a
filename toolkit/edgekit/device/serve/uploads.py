"""The images of one request: multipart field ``image`` (one or more), or a raw image body.

The multipart body is parsed as it streams in (python-multipart, as Starlette does), kept in
memory — the upload limit bounds it — and refused the moment it names more images than
allowed, before the rest is read.
"""

from __future__ import annotations

import dataclasses

import python_multipart
from python_multipart.exceptions import FormParserError
from starlette.requests import Request

from edgekit.device.serve.limits import ApiError

FIELD = "image"
RAW_TYPES = ("application/octet-stream",)  # besides image/*
MAX_NAME = 200
HOW_TO_SEND = ("send the image as multipart field 'image' (curl -F image=@shirt.png) or as the "
               "raw body with its image Content-Type (curl --data-binary @shirt.png -H "
               "'Content-Type: image/png')")


@dataclasses.dataclass(frozen=True)
class Upload:
    name: str  # the file name the client gave, else "image N"
    data: bytes


async def read_images(request: Request, max_images: int) -> list[Upload]:
    """The request's images as bytes; :class:`ApiError` for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        uploads = await _read_multipart(request, max_images)
    elif media_type.startswith("image/") or media_type in RAW_TYPES:
        uploads = [Upload("image 1", await request.body())]
    else:
        shown = media_type or "no Content-Type"
        raise ApiError(415, "unsupported_media_type", f"{shown} is not an image upload; {HOW_TO_SEND}.")
    if not uploads:
        raise ApiError(400, "no_image", f"the form has no field '{FIELD}'; {HOW_TO_SEND}.")
    for upload in uploads:
        if not upload.data:
            raise ApiError(400, "empty_image", f"{upload.name} is empty (0 bytes); {HOW_TO_SEND}.")
    return uploads


class _Parts:
    """python-multipart callbacks collecting the ``image`` parts."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.uploads: list[Upload] = []
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._data: bytearray | None = None
        self._name = ""

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_part, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self) -> None:
        self._disposition, self._data = b"", None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = python_multipart.multipart.parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != FIELD:
            return  # another field: parsed (the byte limit bounds it), ignored
        if len(self.uploads) >= self.max_images:
            raise ApiError(413, "too_many_images",
                           f"more than {self.max_images} images in one request (--max-images); "
                           "send them in several requests.")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")[:MAX_NAME]
        self._name = filename or f"image {len(self.uploads) + 1}"
        self._data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data += data[start:end]

    def _part_end(self) -> None:
        if self._data is not None:
            self.uploads.append(Upload(self._name, bytes(self._data)))
            self._data = None

    def _end(self) -> None:
        self.ended = True


async def _read_multipart(request: Request, max_images: int) -> list[Upload]:
    _, options = python_multipart.multipart.parse_options_header(request.headers["content-type"])
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "the multipart Content-Type has no boundary.")
    parts = _Parts(max_images)
    try:
        parser = python_multipart.MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise ApiError(400, "bad_multipart", f"the multipart body is malformed: {error}.") from None
    if not parts.ended:
        raise ApiError(400, "bad_multipart", "the multipart body ends before its closing boundary.")
    return parts.uploads
