"""stages/_tee.py alone: the HashPipe between two real threads, and the two stages fed
from a memory channel, collecting what they hash and write."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import threading
import time

import pytest
import trio

from stages import _tee
from stages._codec import BlobHasher, LayerDecoder
from stages._config import Limits
from stages._errors import StoreError
from stages._tee import HashPipe, PipeAborted, Side, StageClock, hash_stage, inflate_stage
from stages._types import MediaType

DATA = b"hello layer " * 100_000 + os.urandom(50_000)
BLOB = gzip.compress(DATA)
CHUNKS = [BLOB[i : i + 4096] for i in range(0, len(BLOB), 4096)]


# -- HashPipe ---------------------------------------------------------------------------


def test_pipe_keeps_order_and_ends_after_close() -> None:
    pipe = HashPipe(4)
    pipe.put(Side.RAW, b"a")
    pipe.put(Side.INFLATED, b"b")
    pipe.close()
    assert pipe.get() == (Side.RAW, b"a")
    assert pipe.get() == (Side.INFLATED, b"b")
    assert pipe.get() is None
    with pytest.raises(RuntimeError, match="closed"):
        pipe.put(Side.RAW, b"c")


def test_pipe_put_waits_while_full_and_counts_the_wait() -> None:
    pipe = HashPipe(1)
    pipe.put(Side.RAW, b"first")
    putter = threading.Thread(target=pipe.put, args=(Side.RAW, b"second"))
    putter.start()
    time.sleep(0.2)
    assert putter.is_alive()  # blocked: the pipe holds one piece at most
    assert pipe.get() == (Side.RAW, b"first")
    putter.join(10)
    assert not putter.is_alive()
    assert pipe.get() == (Side.RAW, b"second")
    assert pipe.put_wait_s > 0  # it waited, and the wait was counted


@pytest.mark.parametrize("blocked", ["get", "put"])
def test_abort_wakes_a_waiting_thread(blocked: str) -> None:
    pipe = HashPipe(1)
    if blocked == "put":
        pipe.put(Side.RAW, b"fills it")
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            pipe.get() if blocked == "get" else pipe.put(Side.RAW, b"x")
        except PipeAborted as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    pipe.abort()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(outcome) == 1
    with pytest.raises(PipeAborted):
        pipe.get()


def test_pipe_needs_room() -> None:
    with pytest.raises(ValueError, match="capacity"):
        HashPipe(0)


# -- the two stages together ------------------------------------------------------------


class ListIngest:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.threads: set[int] = set()

    def write(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.written.append(data)

    def sync(self) -> None:
        pass


class FullDisk(ListIngest):
    def write(self, data: bytes) -> None:
        raise OSError(28, "No space left on device")


class Layer:
    """One layer's two stages, wired as stages/_layer.py wires them."""

    def __init__(self, ingest: ListIngest, *, capacity: int = 2, step: int = 64 * 1024) -> None:
        self.pipe = HashPipe(capacity)
        self.hasher, self.diff_hasher = BlobHasher(), hashlib.sha256()
        self.ingest = ingest
        self.decoder = LayerDecoder(
            MediaType.OCI_LAYER_GZIP,
            len(BLOB),
            Limits(inflate_step_bytes=step),
            ref="reg/app:1",
            digest="sha256:ab",
            sink=functools.partial(self.pipe.put, Side.INFLATED),
        )
        self.clocks = StageClock(), StageClock(), StageClock()  # inflate, hash, write

    def start(self, nursery: trio.Nursery, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        inflate_clock, hash_clock, write_clock = self.clocks
        nursery.start_soon(
            inflate_stage, self.decoder, self.pipe, trio.CapacityLimiter(1), inflate_clock, receive
        )
        nursery.start_soon(
            functools.partial(
                hash_stage,
                self.pipe,
                self.hasher,
                self.diff_hasher,
                self.ingest,
                trio.CapacityLimiter(1),
                (hash_clock, write_clock),
                ref="reg/app:1",
                digest="sha256:ab",
            )
        )

    async def run(self, chunks: list[bytes], *, buffer: int = 4) -> None:
        send, receive = trio.open_memory_channel[bytes](buffer)

        async def feed() -> None:
            async with send:
                for chunk in chunks:
                    await send.send(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            self.start(nursery, receive)


async def test_every_byte_is_hashed_inflated_and_written_off_the_event_loop() -> None:
    layer = Layer(ListIngest())
    with trio.fail_after(20):
        await layer.run(CHUNKS)
    sums = layer.hasher.finish()
    assert sums.sha256 == hashlib.sha256(BLOB).hexdigest()
    assert sums.size == len(BLOB)
    assert layer.ingest.written == CHUNKS  # in order, the very objects received
    assert all(a is b for a, b in zip(layer.ingest.written, CHUNKS, strict=True))
    assert threading.get_ident() not in layer.ingest.threads
    decoded = layer.decoder.finish()
    assert decoded.size == len(DATA)
    assert decoded.diff_id is None  # hashed by the hash stage, not the decoder
    assert layer.diff_hasher.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert all(clock.seconds > 0 for clock in layer.clocks)


async def test_bad_data_does_not_fail_the_stages_and_is_still_hashed() -> None:
    layer = Layer(ListIngest())
    raw = [b"not gzip", b" at all"]
    with trio.fail_after(20):
        await layer.run(raw)
    assert layer.hasher.finish().sha256 == hashlib.sha256(b"".join(raw)).hexdigest()
    assert layer.ingest.written == raw
    with pytest.raises(Exception, match="bytes are uncompressed"):
        layer.decoder.finish()


async def test_a_full_disk_is_a_store_error_and_stops_the_inflate_side() -> None:
    layer = Layer(FullDisk(), capacity=1)
    with trio.fail_after(20), pytest.raises(BaseExceptionGroup) as info:
        await layer.run(CHUNKS * 20)
    errors, rest = info.value.split(StoreError)
    assert errors is not None and "No space left" in str(errors.exceptions[0])
    # the only other thing allowed: the feeder finding the inflate stage gone
    assert rest is None or rest.split(trio.BrokenResourceError)[1] is None


async def test_cancelling_the_layer_ends_both_threads() -> None:
    layer = Layer(ListIngest(), capacity=1)
    endless_send, endless_recv = trio.open_memory_channel[bytes](0)
    with trio.fail_after(20):
        with trio.move_on_after(0.5) as scope:
            async with trio.open_nursery() as nursery, endless_send:
                layer.start(nursery, endless_recv)
                for chunk in CHUNKS:
                    await endless_send.send(chunk)
                await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(PipeAborted):
        layer.pipe.get()


async def test_chunks_waiting_go_into_one_thread_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    inflate_batch = _tee._inflate_batch

    def counting(decoder, pipe, clock, batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        inflate_batch(decoder, pipe, clock, batch)

    monkeypatch.setattr(_tee, "_inflate_batch", counting)
    layer = Layer(ListIngest(), capacity=len(CHUNKS) * 4)
    send, receive = trio.open_memory_channel[bytes](len(CHUNKS))
    for chunk in CHUNKS:
        send.send_nowait(chunk)
    send.close()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            layer.start(nursery, receive)
    assert batches == [len(CHUNKS)]
    assert layer.diff_hasher.hexdigest() == hashlib.sha256(DATA).hexdigest()
