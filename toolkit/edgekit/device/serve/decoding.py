"""Decoding uploads without stalling the server: by pixel count, within a pixel budget.

What a decode costs is the picture's pixel count, not its compressed size: a 38 KB PNG can
declare 6300x6300 and take a second to decode and hundreds of MiB to hold. So the count is read
from the image's header first (a PNG's IHDR directly; anything else through Pillow's lazy
``Image.open``, which reads the header and decodes nothing), and:

- a small PNG or JPEG (at most ``INLINE_PIXELS`` and ``INLINE_BYTES``) is decoded on the event
  loop, where a hop to a thread would cost more than the decoding (:func:`on_the_loop`);
- any other is decoded in a worker thread (Pillow releases the GIL while it decodes), after
  taking its pixels from a budget shared by all requests (:class:`PixelBudget`), which bounds
  the memory of concurrent decodes. A request's images take it one after another; an image
  larger than the whole budget takes all of it, so no request is refused for its own images.
  When others hold the budget an image waits its turn (first come, first served), and past
  ``wait_seconds`` the request gets a 429 with ``Retry-After``.

A header that declares more than :data:`edgekit.device.images.MAX_PIXELS` is refused from the
header, before any decoding.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import math
import struct
import time
import warnings

from PIL import Image

from edgekit import errors
from edgekit.contract import InputContract
from edgekit.device import images
from edgekit.device.serve.limits import ApiError
from edgekit.device.serve.multipart import Part

INLINE_PIXELS = 256 * 256
INLINE_BYTES = 256 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def declared_pixels(data: bytes) -> int | None:
    """Width x height as the image's header declares it; None when no header is readable."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])  # what Pillow's PngImagePlugin reads
        return width * height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb's warning: the count says it anyway
            with Image.open(io.BytesIO(data)) as image:  # lazy: the header only
                width, height = image.size
    except Exception:  # not an image, or a damaged header: prepare_bytes says which
        return None
    return width * height


def on_the_loop(data: bytes, pixels: int | None) -> bool:
    """Whether an upload is cheap enough to prepare on the event loop.

    A small PNG or JPEG (one picture, little to decode); anything Pillow refuses at its header
    (not an image, or over the decoding limit). Other formats go to the pool whatever their
    size: a GIF or TIFF is counted frame by frame before its first is decoded, and a small file
    can hold thousands of frames.
    """
    if pixels is None or pixels > images.MAX_PIXELS:
        return True
    still = data[:8] == PNG_SIGNATURE or data[:3] == JPEG_SIGNATURE
    return still and pixels <= INLINE_PIXELS and len(data) <= INLINE_BYTES


class Busy(Exception):
    """The budget stayed taken by other requests for longer than the stated wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class PixelBudget:
    """Pixels being decoded at once, across requests; first come, first served.

    Event-loop only (no locks): :meth:`acquire` and :meth:`release` run on the server's loop.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the pixel budget must be at least 1 pixel")
        self.capacity = capacity
        self.available = capacity
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._pixels_per_second = 20e6  # a first guess for Retry-After; then measured

    def cost(self, pixels: int) -> int:
        """What an image takes from the budget: its pixels, at most the whole budget."""
        return min(max(pixels, 1), self.capacity)

    async def acquire(self, pixels: int, wait_seconds: float) -> int:
        """Take ``pixels`` (clamped by :meth:`cost`); :class:`Busy` after ``wait_seconds``."""
        cost = self.cost(pixels)
        if not self._waiting and self.available >= cost:
            self.available -= cost
            return cost
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, turn)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(turn), wait_seconds)
        except (TimeoutError, asyncio.CancelledError):
            if turn.done() and not turn.cancelled():
                self.release(cost)  # granted just as the wait ended: give it back
            else:
                turn.cancel()
                self._waiting.remove(entry)
                self._grant()  # a smaller image behind this one may fit now
            raise Busy(self.retry_after()) from None
        return cost

    def release(self, cost: int) -> None:
        self.available += cost
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.available:
            cost, turn = self._waiting.popleft()
            self.available -= cost
            turn.set_result(None)

    def retry_after(self) -> int:
        """Seconds until what is held and queued now would be decoded, at the measured rate."""
        queued = self.capacity - self.available + sum(cost for cost, _ in self._waiting)
        return max(1, math.ceil(queued / self._pixels_per_second))

    def measured(self, pixels: int, seconds: float) -> None:
        if seconds > 0:
            self._pixels_per_second = 0.8 * self._pixels_per_second + 0.2 * (pixels / seconds)


class Decoder:
    """Prepares a request's uploads as the contract says, one after another."""

    def __init__(self, contract: InputContract, budget_pixels: int, wait_seconds: float,
                 workers: int = 2) -> None:
        self.contract = contract
        self.budget = PixelBudget(budget_pixels)
        self.wait_seconds = wait_seconds
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="edgekit-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def prepare(self, part: Part) -> images.PreparedImage:
        pixels = declared_pixels(part.data)
        if pixels is not None and pixels > images.MAX_PIXELS:
            # Refused here from the header, as images.decode would refuse it, but without relying
            # on Pillow's process-wide MAX_IMAGE_PIXELS, which decodes in the pool set and reset.
            raise ApiError(422, "not_an_image",
                           f"image {part.name} decodes to more than {images.MAX_PIXELS:,} pixels; "
                           "refusing a possible decompression bomb. Resize it first.")
        if on_the_loop(part.data, pixels):
            return prepare(part, self.contract)  # fails at the header, or decodes little
        try:
            cost = await self.budget.acquire(pixels or len(part.data), self.wait_seconds)
        except Busy as busy:
            raise ApiError(429, "busy", f"other requests are decoding large images; {part.name} "
                                        f"({pixels or 0:,} pixels) waited {self.wait_seconds:g} s "
                                        f"for its turn. Retry in {busy.retry_after} s.",
                           headers={"Retry-After": str(busy.retry_after)}) from None
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        work = self._pool.submit(prepare, part, self.contract)

        def done(_: concurrent.futures.Future[images.PreparedImage]) -> None:
            # The pixels are given back when the decode has ended, not when its request stops
            # waiting for it (a cancelled request must not let more decodes start than fit).
            self.budget.release(cost)
            self.budget.measured(cost, time.perf_counter() - started)

        def ended(_: concurrent.futures.Future[images.PreparedImage]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to give back
                loop.call_soon_threadsafe(done, work)

        work.add_done_callback(ended)
        return await asyncio.wrap_future(work)


def prepare(part: Part, contract: InputContract) -> images.PreparedImage:
    try:
        return images.prepare_bytes(part.data, part.name, contract)
    except errors.ImageError as error:
        raise ApiError(422, "not_an_image", str(error)) from None
