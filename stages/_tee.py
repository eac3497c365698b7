"""The tee of one layer: every raw chunk to the digest, the ingest file and the inflater;
every inflated piece to the diffID hash. Two workers, both off the event loop::

    receive ─▶ inflate_stage ── one thread hop per batch of chunks ──▶ inflate thread
                                  each raw chunk, then the pieces it inflates to
                                                  │
                                            HashPipe (bounded, thread to thread)
                                                  ▼
               hash_stage ── one thread for the whole layer ──▶ raw chunk: sha256 + xxh3,
                                                                ingest write
                                                                piece: sha256 (the diffID)

Why this shape (measured with py-spy on the ``app`` image, see benchmarks/RESULTS.md):
the event loop was the busiest thread of a pull when each of four consumers took its
own thread hop per chunk and every inflated MiB came back through the loop to reach the
diffID hash. Here the loop pays one hop per batch of raw chunks, and the inflated bytes,
three times as many, go from thread to thread without it. The inflate, the slowest step
and the only one that cannot be split, has a thread to itself; the hashes and the write
(together about half its cost) run beside it, so one huge layer still keeps two cores
busy.

The raw chunk goes through the pipe before the inflater sees it, so the digest and the
file always have every byte even when the inflater stops on bad data (``LayerDecoder``
keeps its error for ``finish()``).

Failure on either side ends both: ``hash_stage`` aborts the pipe when it fails (a full
disk), which makes the inflate thread's next ``put`` raise ``PipeAborted``; the inflate
stage, failing or cancelled, aborts it too, which ends the hash thread at its next
``get``. Neither thread can then wait forever on the other.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from typing import Protocol

import trio

from ._codec import BlobHasher, LayerDecoder
from ._commit import IngestFile
from ._errors import StoreError

__all__ = [
    "HashPipe",
    "Hasher",
    "PipeAborted",
    "Side",
    "StageClock",
    "hash_stage",
    "inflate_stage",
]


class Hasher(Protocol):
    """What the diffID hash needs: ``hashlib.sha256()`` has it."""

    def update(self, data: bytes, /) -> None: ...


class Side(enum.Enum):
    """Which side of the inflater a piece of the pipe comes from."""

    RAW = "raw"  # as received: hashed for the digest and written to the ingest file
    INFLATED = "inflated"  # decompressed: hashed for the diffID


class PipeAborted(Exception):
    """The other end of a ``HashPipe`` failed or was cancelled; stop quietly.

    Internal to this module's two stages: the error that matters is the other side's.
    """


class HashPipe:
    """A bounded FIFO from the inflate thread to the hash thread.

    A trio channel would need the event loop for every piece; this needs only a lock.
    ``put`` blocks while ``capacity`` pieces wait, so memory stays bounded (pieces are
    at most ``Limits.chunk_size`` or ``inflate_step_bytes``) whatever the compression
    ratio. ``close`` says no more pieces come; ``abort`` ends both sides now.
    ``put_wait_s`` is the time ``put`` spent blocked, so the inflate thread's clock can
    leave out the time it waited on the hash thread.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a HashPipe needs a capacity of at least 1, not {capacity}")
        self._capacity = capacity
        self._pieces: collections.deque[tuple[Side, bytes]] = collections.deque()
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self._aborted = False
        self.put_wait_s = 0.0

    def put(self, side: Side, data: bytes) -> None:
        """Append a piece, waiting while the pipe is full. Raises ``PipeAborted``."""
        with self._changed:
            if len(self._pieces) >= self._capacity and not self._aborted:
                started = time.perf_counter()
                while len(self._pieces) >= self._capacity and not self._aborted:
                    self._changed.wait()
                self.put_wait_s += time.perf_counter() - started
            if self._aborted:
                raise PipeAborted
            if self._closed:
                raise RuntimeError("put() on a closed HashPipe")
            self._pieces.append((side, data))
            self._changed.notify_all()

    def get(self) -> tuple[Side, bytes] | None:
        """The next piece, waiting while the pipe is empty; ``None`` once it is closed and
        drained. Raises ``PipeAborted``."""
        with self._changed:
            while not self._pieces and not self._closed and not self._aborted:
                self._changed.wait()
            if self._aborted:
                raise PipeAborted
            if not self._pieces:
                return None
            piece = self._pieces.popleft()
            self._changed.notify_all()
            return piece

    def close(self) -> None:
        """No more pieces: ``get`` returns ``None`` after the last one."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def abort(self) -> None:
        """End both sides now: waiting and later calls raise ``PipeAborted``."""
        with self._changed:
            self._aborted = True
            self._pieces.clear()
            self._changed.notify_all()


class StageClock:
    """Seconds one stage spent working in its threads; only that stage writes."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


async def inflate_stage(
    decoder: LayerDecoder,
    pipe: HashPipe,
    limiter: trio.CapacityLimiter,
    clock: StageClock,
    receive: trio.MemoryReceiveChannel[bytes],
) -> None:
    """Put each raw chunk into ``pipe`` and inflate it; the decoder's sink puts the
    pieces. Chunks already waiting in ``receive`` go into the same thread hop, so the
    event loop pays fewer hops exactly when the inflate is the bottleneck.

    Closes ``pipe`` at the end of the stream; aborts it if this stage fails or is
    cancelled. ``decoder`` keeps any error for ``finish()``, so this stage does not fail
    on bad data; it ends quietly if the hash stage aborted the pipe.
    """
    ended = False
    try:
        async with receive:
            async for chunk in receive:
                batch = [chunk]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(
                    _inflate_batch, decoder, pipe, clock, batch, limiter=limiter
                )
        ended = True
    except PipeAborted:
        return
    finally:
        if ended:
            pipe.close()
        else:
            pipe.abort()


def _inflate_batch(
    decoder: LayerDecoder, pipe: HashPipe, clock: StageClock, batch: list[bytes]
) -> None:
    """Runs in a worker thread; the clock leaves out the time spent waiting on the pipe."""
    started, waited = time.perf_counter(), pipe.put_wait_s
    for chunk in batch:
        pipe.put(Side.RAW, chunk)
        decoder.update(chunk)
    clock.seconds += time.perf_counter() - started - (pipe.put_wait_s - waited)


async def hash_stage(
    pipe: HashPipe,
    hasher: BlobHasher,
    diff_hasher: Hasher,
    ingest: IngestFile,
    limiter: trio.CapacityLimiter,
    clocks: tuple[StageClock, StageClock],
    *,
    ref: str,
    digest: str,
) -> None:
    """Drain ``pipe`` in one worker thread until it is closed: raw chunks into ``hasher``
    and ``ingest``, inflated pieces into ``diff_hasher``. ``clocks`` are (hash, write).

    Raises ``StoreError`` if the ingest file cannot be written (and aborts the pipe, so
    the inflate stage stops too); ends quietly if the inflate stage aborted it.
    """
    done = False
    try:
        await trio.to_thread.run_sync(
            _drain, pipe, hasher, diff_hasher, ingest, clocks, ref, digest, limiter=limiter
        )
        done = True
    except PipeAborted:
        done = True
    finally:
        if not done:
            pipe.abort()


def _drain(
    pipe: HashPipe,
    hasher: BlobHasher,
    diff_hasher: Hasher,
    ingest: IngestFile,
    clocks: tuple[StageClock, StageClock],
    ref: str,
    digest: str,
) -> None:
    hash_clock, write_clock = clocks
    clock = time.perf_counter
    while (piece := pipe.get()) is not None:
        side, data = piece
        started = clock()
        if side is Side.INFLATED:
            diff_hasher.update(data)
            hash_clock.seconds += clock() - started
            continue
        hasher.update(data)
        hashed = clock()
        hash_clock.seconds += hashed - started
        try:
            ingest.write(data)
        except OSError as exc:
            raise StoreError(
                f"cannot write layer {digest} to the store's ingest file: {exc}",
                ref=ref,
                digest=digest,
            ) from exc
        write_clock.seconds += clock() - hashed
