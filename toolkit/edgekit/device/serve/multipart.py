"""A strict, incremental ``multipart/form-data`` reader for the ``image`` field (RFC 7578).

Fed the body chunk by chunk as it arrives, it finds each part's headers and content with
``bytes.find`` over one growing buffer (the upload limit bounds it), so a small upload costs a
few calls instead of python-multipart's Python callbacks per header and data piece. A part is
complete when its closing delimiter has arrived, and the reader refuses the moment a request
names more images than allowed, before the rest of the body is read. Anything it does not
understand is a :class:`MultipartError`: a missing or bad delimiter, header lines without a
colon, headers over 16 KiB, a body that ends before its closing delimiter.
"""

from __future__ import annotations

import dataclasses
import re

from python_multipart.multipart import parse_options_header

MAX_HEADERS = 16 * 1024
MAX_NAME = 200
# What browsers, curl and HTTP libraries send; anything else (escapes, filename*, odd spacing)
# goes through python-multipart's full parser, which gives the same result for these.
SIMPLE_DISPOSITION = re.compile(rb'form-data; ?name="([^"\\]*)"(?:; ?filename="([^"\\]*)")?')
SIMPLE_CONTENT_TYPE = re.compile(rb'multipart/form-data; ?boundary=([-\w\'()+,./:=?]{1,70})', re.IGNORECASE)


def disposition_options(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """``Content-Disposition`` as its type and parameters (python-multipart's result)."""
    simple = SIMPLE_DISPOSITION.fullmatch(value)
    if simple is None:
        return parse_options_header(value)
    options = {b"name": simple.group(1)}
    if simple.group(2) is not None:
        options[b"filename"] = simple.group(2)
    return b"form-data", options


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary parameter of a multipart ``Content-Type`` (python-multipart's result)."""
    simple = SIMPLE_CONTENT_TYPE.fullmatch(content_type)
    if simple is not None:
        return simple.group(1)
    return parse_options_header(content_type)[1].get(b"boundary")


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


class TooManyParts(Exception):
    """More ``image`` parts than allowed."""


@dataclasses.dataclass(frozen=True)
class Part:
    name: str  # the file name the client gave, else "image N"
    data: bytes


_PREAMBLE, _DELIMITER, _HEADERS, _CONTENT, _END = range(5)


class MultipartReader:
    """Collects the parts of field ``field``; other fields are parsed and dropped."""

    def __init__(self, boundary: bytes, field: str, max_parts: int) -> None:
        if not boundary or len(boundary) > 70:  # RFC 2046 5.1.1: 1 to 70 characters
            raise MultipartError("the multipart boundary must be 1 to 70 characters")
        self._delimiter = b"--" + boundary
        self._separator = b"\r\n" + self._delimiter
        self._field = field
        self._max_parts = max_parts
        self._buffer = bytearray()
        self._position = 0
        self._scanned = 0
        self._state = _PREAMBLE
        self._keep = False  # whether the part being read is an image
        self._name = ""
        self.parts: list[Part] = []

    @property
    def ended(self) -> bool:
        return self._state == _END

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the body; parse every part it completes."""
        if self._state == _END:
            return  # the epilogue after the closing delimiter is ignored
        self._buffer += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _DELIMITER:
            return self._after_delimiter()
        if self._state == _HEADERS:
            return self._headers()
        if self._state == _CONTENT:
            return self._content()
        return False

    def _preamble(self) -> bool:
        buffer = self._buffer
        if buffer.startswith(self._delimiter):
            found = 0
        else:  # a preamble may come first; the delimiter then starts a line
            found = buffer.find(self._separator)
            if found < 0:
                if len(buffer) > MAX_HEADERS:
                    raise MultipartError("no multipart delimiter in the body's first 16 KiB")
                return False
            found += 2
        self._position = found + len(self._delimiter)
        self._state = _DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """After a delimiter: ``--`` closes the body, CRLF starts the next part."""
        position = self._position
        ending = bytes(self._buffer[position:position + 2])
        if len(ending) < 2:
            return False
        if ending == b"--":
            self._state = _END
            return False
        if ending != b"\r\n":
            raise MultipartError("a multipart delimiter is followed by neither CRLF nor '--'")
        self._position = position + 2
        self._state = _HEADERS
        return True

    def _headers(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n", self._position - 2)
        if end < 0:
            if len(self._buffer) - self._position > MAX_HEADERS:
                raise MultipartError("a part's headers are over 16 KiB")
            return False
        disposition = b""
        if end > self._position - 2:
            for line in bytes(self._buffer[self._position:end]).split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or not name.strip():
                    raise MultipartError("a part's header line has no 'name: value'")
                if name.strip().lower() == b"content-disposition":
                    disposition = value.strip()
        self._start_part(disposition)
        self._position = end + 4
        self._state = _CONTENT
        return True

    def _start_part(self, disposition: bytes) -> None:
        kind, options = disposition_options(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._keep = kind == b"form-data" and name == self._field
        if not self._keep:
            return
        if len(self.parts) >= self._max_parts:
            raise TooManyParts()
        filename = options.get(b"filename", b"").decode("utf-8", "replace")[:MAX_NAME]
        self._name = filename or f"image {len(self.parts) + 1}"

    def _content(self) -> bool:
        end = self._buffer.find(self._separator, max(self._position, self._scanned))
        if end < 0:
            # The next search starts where a delimiter split across chunks could begin, so a
            # large part is scanned once, not once per chunk.
            self._scanned = len(self._buffer) - len(self._separator) + 1
            return False
        if self._keep:
            self.parts.append(Part(self._name, bytes(self._buffer[self._position:end])))
        else:  # a field we do not keep: drop what is read of it
            del self._buffer[:end]
            end = 0
        self._scanned = 0
        self._position = end + len(self._separator)
        self._state = _DELIMITER
        return True
