"""The mechanisms of `edgekit serve`'s lean path, one by one (the whole server is test_serve's).

Short model calls are gathered on the event loop: the requests ready in one pass of the loop
share one call, without waiting for anyone; long calls still go to the model thread. A
connection's writes in one pass leave as one system call, and closing sends them first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'edgekit[serve]'")

from edgekit.device.serve import batching, server  # noqa: E402
from edgekit.device.serve.batching import BatcherClosed, MicroBatcher  # noqa: E402


def recording_model(calls: list[int]) -> Any:
    """A model whose answer for an image is its first pixel, and which records each call's size."""

    def predict(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return np.repeat(pixels.reshape(len(pixels), -1)[:, :1].astype(np.float32), 2, axis=1)

    return predict


def image(value: int) -> np.ndarray:
    return np.full((1, 2, 2, 1), value, dtype=np.uint8)


async def warm(batcher: MicroBatcher) -> None:
    """One call through the model thread: the call is measured (short) from then on."""
    with batcher.arrival() as arrival:
        await arrival.submit(image(0))


async def gathered_together(batcher: MicroBatcher, values: list[int]) -> list[float]:
    async def one(value: int) -> float:
        with batcher.arrival() as arrival:
            pending = arrival.gather(image(value))
        assert pending is not None, "a short call on a free model is gathered"
        return float((await pending).probabilities[0, 0])

    await warm(batcher)
    return list(await asyncio.gather(*(one(value) for value in values)))


@pytest.fixture
def calls() -> list[int]:
    return []


@pytest.fixture
def batcher(calls):
    started = MicroBatcher(recording_model(calls), max_batch=8, wait_seconds=0)
    started.start()
    yield started
    started.close()


def test_requests_ready_in_one_pass_share_one_call_on_the_loop(batcher, calls):
    answers = asyncio.run(gathered_together(batcher, list(range(1, 7))))
    assert answers == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # each request gets its own row
    assert calls == [1, 6]  # the warm-up through the thread, then one call for the six
    assert (batcher.batches, batcher.images) == (2, 7)


def test_a_gathered_call_never_takes_more_than_max_batch(calls):
    small = MicroBatcher(recording_model(calls), max_batch=4, wait_seconds=0)
    small.start()
    try:
        answers = asyncio.run(gathered_together(small, list(range(1, 11))))
    finally:
        small.close()
    assert answers == [float(value) for value in range(1, 11)]
    assert calls[0] == 1 and calls[1:] == [4, 4, 2]


def test_a_lone_request_is_answered_in_the_next_pass(batcher, calls):
    async def alone() -> tuple[float, int]:
        await warm(batcher)
        with batcher.arrival() as arrival:
            pending = arrival.gather(image(9))
        assert pending is not None
        passes = 0
        while not pending.done():  # nobody else is coming: no wait for them
            await asyncio.sleep(0)
            passes += 1
        return float(pending.result().probabilities[0, 0]), passes

    value, passes = asyncio.run(alone())
    assert value == 9.0 and passes <= 2 and calls == [1, 1]


async def arriving_apart(batcher: MicroBatcher, groups: list[list[int]], apart: float) -> list[float]:
    """Requests in groups, each group ready in one pass, the groups ``apart`` seconds apart."""
    async def one(value: int, delay: float) -> float:
        await asyncio.sleep(delay)
        with batcher.arrival() as arrival:
            pending = arrival.gather(image(value))
        assert pending is not None
        return float((await pending).probabilities[0, 0])

    return list(await asyncio.gather(*(one(value, index * apart) for index, group in enumerate(groups)
                                       for value in group)))


def test_with_others_in_flight_a_call_waits_for_as_many_as_lately(batcher, calls, monkeypatch):
    monkeypatch.setattr(batching, "GATHER_SECONDS", 30.0)  # only the count can end the wait

    async def scenario() -> tuple[list[float], float]:
        await gathered_together(batcher, [1, 2, 3, 4, 5, 6])  # lately: six at a time
        started = time.perf_counter()
        answers = await arriving_apart(batcher, [[7, 8, 9], [10, 11, 12]], apart=0.05)
        return answers, time.perf_counter() - started

    answers, seconds = asyncio.run(scenario())
    assert answers == [7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    assert calls == [1, 6, 6]  # the two groups, 50 ms apart, shared one call
    assert seconds < 10  # made when the sixth came, not when the wait ran out


def test_the_wait_for_others_is_bounded(batcher, calls, monkeypatch):
    monkeypatch.setattr(batching, "GATHER_SECONDS", 0.05)

    async def scenario() -> list[float]:
        await gathered_together(batcher, [1, 2, 3, 4, 5, 6])
        return await arriving_apart(batcher, [[7, 8]], apart=0)  # fewer than lately

    assert asyncio.run(scenario()) == [7.0, 8.0]
    assert calls == [1, 6, 2]  # made when the wait ran out


def test_a_client_left_alone_stops_waiting_after_one_wait(batcher, calls, monkeypatch):
    monkeypatch.setattr(batching, "GATHER_SECONDS", 0.05)

    async def lone(value: int) -> int:
        with batcher.arrival() as arrival:
            pending = arrival.gather(image(value))
        assert pending is not None
        passes = 0
        while not pending.done():
            await asyncio.sleep(0)
            passes += 1
        return passes

    async def scenario() -> list[int]:
        await gathered_together(batcher, [1, 2, 3, 4, 5, 6])  # others were in flight
        return [await lone(value) for value in (7, 8, 9)]

    waited, second, third = asyncio.run(scenario())
    assert waited > 2  # the first waited for others who did not come ...
    assert second <= 2 and third <= 2  # ... and from then on it is answered at once
    assert calls == [1, 6, 1, 1, 1]


def test_a_long_call_goes_to_the_model_thread(batcher, calls, monkeypatch):
    monkeypatch.setattr(batching, "INLINE_SECONDS", 0.0)  # every measured call counts as long

    async def scenario() -> float:
        await warm(batcher)
        with batcher.arrival() as arrival:
            assert arrival.gather(image(3)) is None
            pending = arrival.submit(image(3))
        return float((await pending).probabilities[0, 0])

    assert asyncio.run(scenario()) == 3.0 and calls == [1, 1]


def test_gathered_requests_wait_for_the_thread_when_it_has_the_model(batcher, calls):
    async def scenario() -> list[float]:
        await warm(batcher)
        pending = []
        batcher._model_lock.acquire()  # as the model thread does during a call of its own
        try:
            for value in (4, 5):
                with batcher.arrival() as arrival:
                    pending.append(arrival.gather(image(value)))
            await asyncio.sleep(0.05)  # the flush found the model busy and queued them
            assert not any(future.done() for future in pending)
        finally:
            batcher._model_lock.release()
        return [float((await future).probabilities[0, 0]) for future in pending]

    assert asyncio.run(scenario()) == [4.0, 5.0]
    assert sum(calls[1:]) == 2


def test_a_gathered_request_after_close_is_told_the_server_stops(calls):
    stopping = MicroBatcher(recording_model(calls), max_batch=8, wait_seconds=0)
    stopping.start()

    async def scenario() -> None:
        await warm(stopping)
        with stopping.arrival() as arrival:
            pending = arrival.gather(image(1))
        assert pending is not None
        stopping.close()  # before the flush: the worker has ended
        await pending

    with pytest.raises(BatcherClosed):
        asyncio.run(scenario())


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)


def test_writes_in_one_pass_leave_as_one_and_in_order():
    async def scenario() -> FakeTransport:
        fake = FakeTransport()
        transport = server.CoalescingTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"{}"))
        assert fake.writes == []  # nothing leaves before the pass ends
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 5000)  # the rest is the transport's
        return fake

    fake = asyncio.run(scenario())
    assert fake.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"next"]


def test_closing_sends_what_is_gathered_first_and_abort_drops_it():
    async def scenario() -> tuple[FakeTransport, FakeTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = FakeTransport(), FakeTransport()
        first = server.CoalescingTransport(closed, loop)  # type: ignore[arg-type]
        first.write(b"last words")
        first.close()
        second = server.CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
        second.write(b"never sent")
        second.abort()
        await asyncio.sleep(0)  # the scheduled flushes find nothing (or a closed transport)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_writes_to_a_transport_closed_meanwhile_are_dropped():
    async def scenario() -> FakeTransport:
        fake = FakeTransport()
        transport = server.CoalescingTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"late")
        fake.close()  # the peer went away before the pass ended
        await asyncio.sleep(0)
        return fake

    assert asyncio.run(scenario()).writes == []
