"""Micro-batching: requests that arrive together run as one model call.

A worker thread runs the model calls that are long or that arrive while the model is busy
(LiteRT interpreters and ONNX Runtime sessions are called by one thread at a time: a lock
sees to it; short calls may run on the event loop, see below). A request announces itself
when it starts reading its body (:meth:`MicroBatcher.arrival`) and hands over its prepared
pixels with :meth:`Arrival.submit`, which also ends its arrival. The worker takes the first
waiting job and, while other requests are still on their way and the batch has room, waits up
to ``wait_seconds`` for them; with nothing on its way it runs at once, so a lone client never
pays the wait. ``max_batch`` 1 is "no batching": every request is one call.

Whether requests queued together run as one call is decided from measurement, not assumed
(:class:`BatchPolicy`): the model time per image is measured over windows of calls run each
way, re-allocations included (a LiteRT model re-allocates its tensors for every new batch
size, and a small model gains little per image), and the cheaper way is kept; every
``EXPLORE_EVERY``-th window tries the other, so both measures stay current.

A model call measured under ``INLINE_SECONDS`` is made on the event loop, not the worker
thread: the hop there and back (two thread wake-ups) would cost more than the call. The
requests whose pixels are ready in one pass of the loop (those that arrived together) gather
(:meth:`Arrival.gather`) into one call, made by a callback scheduled after them; a lone client
never waits for anyone. When the calls have held several requests lately, a call waits up to
``GATHER_SECONDS`` for as many as lately (see the constants): whether and how long to wait
follows the queue depth measured, not a flag. If the worker has the model at that moment, the
gathered requests join its queue. A lock keeps calls one at a time either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

WINDOW_IMAGES = 64  # images per measured window of the batching choice
EXPLORE_EVERY = 8  # windows
# A model call measured shorter than this runs on the event loop when the model is free and
# nothing is queued for it: it costs less than the hop to the model thread and back (two
# thread wake-ups, each a scheduler's latency on a busy machine), and holds other requests up
# no longer than decoding a small picture on the loop does.
INLINE_SECONDS = 0.005
SMOOTHING = 0.2  # weight of the newest measure in a running mean
# When gathered calls have held several requests lately (other clients are in flight), a new
# gathered call waits for as many as the largest lately (fading by PEAK_DECAY per call), up to
# GATHER_SECONDS: more requests share the call, and their answers leave together, which costs
# less per request than a call and a burst of writes per pass of the loop (measured in
# docs/serve.md). A wait that runs out stops the waiting until a pass shows others in flight
# again: a lone client, or clients slower than the server, are not kept waiting.
CONCURRENT = 1.5  # the fading peak above which a gathered call waits for others
PEAK_DECAY = 0.9
GATHER_SECONDS = 0.002


class BatchPolicy:
    """Whether the jobs queued when the model is free run as one call or one call each."""

    def __init__(self) -> None:
        self.batching = True  # the choice for the current window
        self.cost: dict[bool, float | None] = {True: None, False: None}  # model s per image
        self._images = 0
        self._seconds = 0.0
        self._chosen = False  # whether the window held a choice (several jobs queued at once)
        self._windows = 0

    def chosen(self) -> bool:
        """The choice for jobs queued together now."""
        self._chosen = True
        return self.batching

    def record(self, images: int, seconds: float) -> None:
        """Every model call: its images and time count for the current window's choice."""
        self._images += images
        self._seconds += seconds
        if self._images < WINDOW_IMAGES:
            return
        if self._chosen:  # a window without a choice says nothing about either way
            per_image = self._seconds / self._images
            known = self.cost[self.batching]
            self.cost[self.batching] = per_image if known is None else known + SMOOTHING * (per_image - known)
            self._windows += 1
            self.batching = self._next()
        self._images, self._seconds, self._chosen = 0, 0.0, False

    def _next(self) -> bool:
        batched, single = self.cost[True], self.cost[False]
        if batched is None or single is None:
            return single is not None  # measure the way not measured yet
        better = batched <= single
        return better != (self._windows % EXPLORE_EVERY == 0)


class BatcherClosed(RuntimeError):
    """The server is stopping; no new model calls are taken."""


@dataclasses.dataclass(frozen=True)
class BatchResult:
    probabilities: np.ndarray  # [images of this request, classes]
    queue_seconds: float  # from submit to the start of the model call
    model_seconds: float  # the batch's model call
    batch_images: int  # images in that call (this request's and others')


@dataclasses.dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future[BatchResult]
    loop: asyncio.AbstractEventLoop
    submitted: float


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 wait_seconds: float) -> None:
        if max_batch < 1 or wait_seconds < 0:
            raise ValueError("max_batch must be at least 1 and wait_seconds at least 0")
        self._predict = predict
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._condition = threading.Condition()
        self._model_lock = threading.Lock()  # one model call at a time, on whichever thread
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_images = 0
        self._arriving = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="edgekit-model", daemon=True)
        self.batches = 0  # model calls made
        self.images = 0  # images they held
        self._call_seconds: dict[int, float] = {}  # running mean of a call, by its size
        self.policy = BatchPolicy()
        self._gathered: list[_Job] = []  # short calls gathered on the loop (see gather)
        self._gathered_images = 0
        self._peak = 1.0  # requests per gathered call lately (the largest, fading)
        self._generation = 0  # gathered calls made so far

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @contextlib.contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Mark a request as on its way (reading, decoding) until it submits or the block ends."""
        arrival = Arrival(self)
        with self._condition:
            self._arriving += 1  # no wake-up: more arrivals only make a waiting batch wait on
        try:
            yield arrival
        finally:
            if not arrival.submitted:
                with self._condition:
                    self._arriving -= 1
                    self._condition.notify_all()

    def submit(self, pixels: np.ndarray) -> asyncio.Future[BatchResult]:
        """Queue uint8 ``[N, H, W, C]`` pixels (``N <= max_batch``); await the returned future."""
        return self._enqueue(pixels, arrived=False)

    def _enqueue(self, pixels: np.ndarray, arrived: bool) -> asyncio.Future[BatchResult]:
        if not 1 <= len(pixels) <= self.max_batch:
            raise ValueError(f"a job holds 1..{self.max_batch} images, not {len(pixels)}")
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), loop, time.perf_counter())
        with self._condition:
            if self._closed:
                raise BatcherClosed("the server is stopping")
            self._jobs.append(job)
            self._queued_images += len(pixels)
            self._arriving -= arrived  # one change under the lock: never seen as on its way twice
            self._condition.notify_all()
        return job.future

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            with self._model_lock:
                outcomes = self._run_all(jobs)
            _deliver(outcomes)  # one wake-up of the loop for the whole batch

    def _measured(self, images: int, seconds: float) -> None:
        known = self._call_seconds.get(images)
        self._call_seconds[images] = seconds if known is None else known + SMOOTHING * (seconds - known)

    def _next_batch(self) -> list[_Job] | None:
        with self._condition:
            while not self._jobs and not self._closed:
                self._condition.wait()
            if not self._jobs:
                return None  # closed, and everything queued has run
            deadline = time.perf_counter() + self.wait_seconds
            while self._arriving and self._queued_images < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            jobs = [self._jobs.popleft()]
            images = len(jobs[0].pixels)
            while self._jobs and images + len(self._jobs[0].pixels) <= self.max_batch:
                jobs.append(self._jobs.popleft())
                images += len(jobs[-1].pixels)
            self._queued_images -= images
            return jobs

    def _gather(self, arrival: Arrival, pixels: np.ndarray) -> asyncio.Future[BatchResult] | None:
        known = self._call_seconds.get(len(pixels))
        if known is None or known > INLINE_SECONDS or self._jobs or self._closed:
            return None
        if self._gathered_images + len(pixels) > self.max_batch:
            self._flush_gathered()  # full: it runs now, and this request starts the next one
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), loop, time.perf_counter())
        if not self._gathered:
            if self._peak > CONCURRENT:  # others are in flight: wait a moment for them
                loop.call_later(GATHER_SECONDS, self._flush_gathered, self._generation, True)
            else:
                loop.call_soon(self._flush_gathered, self._generation)  # after this pass's others
        self._gathered.append(job)
        self._gathered_images += len(pixels)
        if len(self._gathered) == int(self._peak) and self._peak > CONCURRENT:
            loop.call_soon(self._flush_gathered, self._generation)  # as many as lately: go
        with self._condition:
            self._arriving -= 1
        arrival.submitted = True
        return job.future

    def _flush_gathered(self, generation: int | None = None, waited: bool = False) -> None:
        if generation is not None and generation != self._generation:
            return  # that call was made already (full, or its number reached)
        jobs, self._gathered, self._gathered_images = self._gathered, [], 0
        self._generation += 1
        if not jobs:
            return
        # A wait that ran out did not pay (a lone client, or clients slower than the server):
        # calls go back to the end of the pass until one shows others in flight again.
        self._peak = 1.0 if waited else max(float(len(jobs)), PEAK_DECAY * self._peak)
        with self._condition:
            if self._closed:  # the worker may have ended: nobody would run these
                for job in jobs:
                    _settle(job, BatcherClosed("the server is stopping"))
                return
            if self._jobs or not self._model_lock.acquire(blocking=False):
                self._jobs.extend(jobs)  # the worker has the model: it runs these next
                self._queued_images += sum(len(job.pixels) for job in jobs)
                self._condition.notify_all()
                return
        try:
            outcomes = self._run_all(jobs)
        finally:
            self._model_lock.release()
        _settle_all(outcomes)

    def _call(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """One model call, measured (the caller holds the model lock)."""
        started = time.perf_counter()
        probabilities = self._predict(pixels)
        seconds = time.perf_counter() - started
        self._measured(len(pixels), seconds)
        self.policy.record(len(pixels), seconds)
        self.batches += 1
        self.images += len(pixels)
        return probabilities, seconds

    def _run_all(self, jobs: list[_Job]) -> list[tuple[_Job, BatchResult | Exception]]:
        """The jobs queued together: one call, or one call each, as the policy has measured
        cheaper (the caller holds the model lock)."""
        if len(jobs) == 1 or self.policy.chosen():
            return self._run_locked(jobs)
        return [outcome for job in jobs for outcome in self._run_locked([job])]

    def _run_locked(self, jobs: list[_Job]) -> list[tuple[_Job, BatchResult | Exception]]:
        """One call for ``jobs``; each job's outcome (a failed call fails its jobs only)."""
        pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([job.pixels for job in jobs])
        started = time.perf_counter()
        try:
            probabilities, model_seconds = self._call(pixels)
        except Exception as error:  # the requests get it; the server keeps serving
            return [(job, error) for job in jobs]
        outcomes: list[tuple[_Job, BatchResult | Exception]] = []
        offset = 0
        for job in jobs:
            count = len(job.pixels)
            outcomes.append((job, BatchResult(probabilities[offset:offset + count],
                                              started - job.submitted, model_seconds, len(pixels))))
            offset += count
        return outcomes


class Arrival:
    """A request on its way to the batcher (see :meth:`MicroBatcher.arrival`)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self.submitted = False

    def gather(self, pixels: np.ndarray) -> asyncio.Future[BatchResult] | None:
        """Join the call made on the loop for the requests ready in this pass, when the model's
        call for these pixels has measured short and nothing is queued for the worker; None
        otherwise (then :meth:`submit`). Must be called on the event loop's thread."""
        return self._batcher._gather(self, pixels)

    def submit(self, pixels: np.ndarray) -> asyncio.Future[BatchResult]:
        """Queue this request's pixels; the first call also ends its arrival."""
        future = self._batcher._enqueue(pixels, arrived=not self.submitted)
        self.submitted = True
        return future


def _settle(job: _Job, outcome: BatchResult | Exception) -> None:
    """On the job's event loop: its request gets the outcome (unless it was cancelled)."""
    if job.future.done():  # the request was cancelled (client gone)
        return
    if isinstance(outcome, Exception):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


def _deliver(outcomes: list[tuple[_Job, BatchResult | Exception]]) -> None:
    """From the worker thread: one wake-up of each event loop for all of its jobs."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, BatchResult | Exception]]] = {}
    for job, outcome in outcomes:
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the event loop has already closed
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(outcomes: list[tuple[_Job, BatchResult | Exception]]) -> None:
    for job, outcome in outcomes:
        _settle(job, outcome)
