"""stages/_tee.py alone: feed memory channels, collect what the stages produce."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading

import pytest
import trio

from stages._codec import BlobHasher, LayerDecoder
from stages._config import Limits
from stages._errors import StoreError
from stages._tee import HandOff, StageClock, digest_stage, inflate_stage, ingest_stage, tee
from stages._types import MediaType

CHUNKS = [os.urandom(1000) for _ in range(20)]


async def feed(send: trio.MemorySendChannel[bytes], chunks: list[bytes]) -> None:
    async with send:
        for chunk in chunks:
            await send.send(chunk)


async def test_tee_sends_every_chunk_to_every_consumer_without_copying() -> None:
    chunks_send, chunks_recv = trio.open_memory_channel[bytes](0)
    outs = [trio.open_memory_channel[bytes](1) for _ in range(3)]
    got: list[list[bytes]] = [[], [], []]

    async def collect(i: int, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for chunk in receive:
                got[i].append(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, chunks_send, CHUNKS)
            nursery.start_soon(tee, chunks_recv, [send for send, _ in outs])
            for i, (_, receive) in enumerate(outs):
                nursery.start_soon(collect, i, receive)
    for received in got:
        assert len(received) == len(CHUNKS)
        assert all(a is b for a, b in zip(received, CHUNKS, strict=True))  # shared, not copied


async def test_a_consumer_that_goes_away_is_felt_upstream() -> None:
    chunks_send, chunks_recv = trio.open_memory_channel[bytes](0)
    one_send, one_recv = trio.open_memory_channel[bytes](0)
    two_send, two_recv = trio.open_memory_channel[bytes](0)

    async def drain(receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for _ in receive:
                pass

    async def quit_after_one(receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            await receive.receive()

    with trio.fail_after(10), pytest.RaisesGroup(trio.BrokenResourceError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, chunks_send, CHUNKS)
            nursery.start_soon(tee, chunks_recv, [one_send, two_send])
            nursery.start_soon(drain, one_recv)
            nursery.start_soon(quit_after_one, two_recv)


async def run_consumer(stage, *args, chunks: list[bytes] = CHUNKS, buffer: int = 4, **kwargs):
    send, receive = trio.open_memory_channel[bytes](buffer)
    limiter = trio.CapacityLimiter(2)
    clock = StageClock()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, send, chunks)
            nursery.start_soon(lambda: stage(*args, limiter, clock, receive, **kwargs))
    return clock


async def test_digest_stage() -> None:
    hasher = BlobHasher()
    clock = await run_consumer(digest_stage, hasher)
    sums = hasher.finish()
    assert sums.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert sums.size == sum(map(len, CHUNKS))
    assert clock.seconds > 0


async def test_inflate_stage() -> None:
    data = b"hello layer " * 100_000
    blob = gzip.compress(data)
    chunks = [blob[i : i + 4096] for i in range(0, len(blob), 4096)]
    out_send, out_recv = trio.open_memory_channel[bytes](1)
    handoff = HandOff(out_send)
    limits = Limits(inflate_step_bytes=64 * 1024)
    decoder = LayerDecoder(
        MediaType.OCI_LAYER_GZIP, len(blob), limits, ref="r", digest="d", sink=handoff
    )
    diff_hasher = hashlib.sha256()
    pieces: list[int] = []

    async def hash_output() -> None:
        async with out_recv:
            async for piece in out_recv:
                pieces.append(len(piece))
                diff_hasher.update(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hash_output)
        clock = await run_consumer(inflate_stage, decoder, send=out_send, chunks=chunks)
    decoded = decoder.finish()
    assert decoded.diff_id is None  # hashed by whoever reads the sink
    assert diff_hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert decoded.size == len(data) == sum(pieces)
    assert max(pieces) <= 64 * 1024  # bounded pieces, whatever the ratio
    assert clock.seconds > 0


async def test_inflate_stage_does_not_fail_on_bad_data() -> None:
    decoder = LayerDecoder(MediaType.OCI_LAYER_GZIP, 10, Limits(), ref="r", digest="d")
    out_send, out_recv = trio.open_memory_channel[bytes](1)
    await run_consumer(inflate_stage, decoder, send=out_send, chunks=[b"not gzip", b"at all"])
    async with out_recv:
        assert [piece async for piece in out_recv] == []
    with pytest.raises(Exception, match="bytes are uncompressed"):
        decoder.finish()


class ListIngest:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.threads: set[int] = set()

    def write(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.written.append(data)

    def sync(self) -> None:
        pass


async def test_ingest_stage_writes_in_order_off_the_event_loop() -> None:
    ingest = ListIngest()
    await run_consumer(ingest_stage, ingest, ref="r", digest="d")
    assert ingest.written == CHUNKS
    assert threading.get_ident() not in ingest.threads


class FullDisk(ListIngest):
    def write(self, data: bytes) -> None:
        raise OSError(28, "No space left on device")


async def test_ingest_write_error_is_a_store_error() -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        await run_consumer(ingest_stage, FullDisk(), ref="reg/app:1", digest="sha256:ab")
    errors, rest = info.value.split(StoreError)
    assert errors is not None and "No space left" in str(errors.exceptions[0])
    # the only other thing allowed: the feeder finding its consumer gone
    assert rest is None or rest.split(trio.BrokenResourceError)[1] is None


class CountingClock(StageClock):
    __slots__ = ("batches",)

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def run(self, work, batch) -> None:  # type: ignore[no-untyped-def]
        self.batches.append(len(batch))
        super().run(work, batch)


async def test_a_consumer_behind_takes_waiting_chunks_in_one_hop() -> None:
    send, receive = trio.open_memory_channel[bytes](len(CHUNKS))
    for chunk in CHUNKS:
        send.send_nowait(chunk)
    send.close()
    hasher, clock = BlobHasher(), CountingClock()
    with trio.fail_after(10):
        await digest_stage(hasher, trio.CapacityLimiter(1), clock, receive)
    assert clock.batches == [len(CHUNKS)]
    assert hasher.finish().sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
