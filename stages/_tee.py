"""The tee stage and the consumer stages of one layer.

``tee`` sends every chunk to every consumer's channel in turn (``clone()`` would split
the chunks between receivers, not copy them). The chunk is a ``bytes`` object that all
consumers read and none changes, so it is shared, never copied.

Each consumer is a thin loop around a synchronous object from ``_codec`` (or the store's
ingest file) whose work runs in a worker thread under the limiter it is given: the
compressed hash, the inflate, the diffID hash (fed by the inflate through a ``HandOff``)
and the disk write of one layer overlap on different cores. A consumer that falls
behind takes every chunk already waiting in its channel into one thread hop, so the
event loop pays fewer hops exactly when a stage is the bottleneck.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from ._codec import BlobHasher, LayerDecoder
from ._commit import IngestFile
from ._errors import StoreError

__all__ = [
    "HandOff",
    "Hasher",
    "StageClock",
    "diffid_stage",
    "digest_stage",
    "inflate_stage",
    "ingest_stage",
    "tee",
]


class Hasher(Protocol):
    """What the diffID stage needs of a hash: ``hashlib.sha256()`` has it."""

    def update(self, data: bytes, /) -> None: ...


class StageClock:
    """Seconds one consumer stage spent working in its threads; only that stage writes.

    Each stage awaits its own thread before starting the next, so the sum needs no lock.
    """

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    def run(self, work: Callable[[bytes], object], batch: list[bytes]) -> None:
        started = time.perf_counter()
        for chunk in batch:
            work(chunk)
        self.seconds += time.perf_counter() - started


async def tee(
    receive: trio.MemoryReceiveChannel[bytes], sends: Sequence[trio.MemorySendChannel[bytes]]
) -> None:
    """Send each chunk from ``receive`` to every channel in ``sends``, in order."""
    async with receive, contextlib.AsyncExitStack() as stack:
        for send in sends:
            await stack.enter_async_context(send)
        async for chunk in receive:
            for send in sends:
                await send.send(chunk)


async def digest_stage(
    hasher: BlobHasher,
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
) -> None:
    """sha256 (and xxh3) of the compressed bytes."""
    await _consume(hasher.update, limiter, clock, receive)


class HandOff:
    """The sink a ``LayerDecoder`` calls from the inflate stage's worker thread: each
    uncompressed piece goes into a trio channel, the thread waiting while the channel is
    full. That backpressure keeps memory bounded whatever the compression ratio, and lets
    the diffID hash run in a thread of its own, overlapping the inflate (a single huge
    layer otherwise inflates and hashes in turn on one core).

    ``waited_s`` is the time spent waiting on the channel, so that the inflate stage's
    time can be told apart from the hash stage's.
    """

    def __init__(self, send: trio.MemorySendChannel[bytes]) -> None:
        self.send = send
        self.waited_s = 0.0

    def __call__(self, piece: bytes) -> None:
        started = time.perf_counter()
        trio.from_thread.run(self.send.send, piece)
        self.waited_s += time.perf_counter() - started


async def inflate_stage(
    decoder: LayerDecoder,
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
    send: trio.MemorySendChannel[bytes],
) -> None:
    """Decompress; the decoder's sink (a ``HandOff`` onto ``send``) passes the output on,
    and ``send`` is closed at the end so the diffID stage ends. ``decoder`` keeps any
    error for ``finish()``, so this stage does not fail on bad data."""
    async with send:
        await _consume(decoder.update, limiter, clock, receive)


async def diffid_stage(
    hasher: Hasher,
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
) -> None:
    """sha256 of the uncompressed bytes: the layer's diffID."""
    await _consume(hasher.update, limiter, clock, receive)


async def ingest_stage(
    ingest: IngestFile,
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
    *,
    ref: str,
    digest: str,
) -> None:
    """Append the raw bytes to the store's ingest file."""

    def write(chunk: bytes) -> None:
        try:
            ingest.write(chunk)
        except OSError as exc:
            raise StoreError(
                f"cannot write layer {digest} to the store's ingest file: {exc}",
                ref=ref,
                digest=digest,
            ) from exc

    await _consume(write, limiter, clock, receive)


async def _consume(
    work: Callable[[bytes], object],
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
) -> None:
    async with receive:
        async for chunk in receive:
            batch = [chunk]
            while True:  # whatever else is already waiting goes in the same hop
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await trio.to_thread.run_sync(clock.run, work, batch, limiter=limiter)
