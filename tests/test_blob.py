"""stages/_blob.py alone: a fake BlobSource on httpx.MockTransport, the output collected
from the stage's channel."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio

from stages._blob import NetworkClock, blob_stream
from stages._config import Limits
from stages._errors import RegistryUnavailable, SizeMismatch, Truncated
from stages._events import ProgressEvent
from stages._reference import Reference
from stages._types import Descriptor, Digest, MediaType

REF = Reference("reg.test", "team/app", "1.0")
BLOB = os.urandom(10_000)
LAYER = Descriptor(
    MediaType.OCI_LAYER_GZIP, Digest.from_hex(hashlib.sha256(BLOB).hexdigest()), len(BLOB)
)
# No retries: each failure test sees the one attempt's error (retries have tests below).
LIMITS = Limits(chunk_size=1024, chunk_buffer=2, retries=0)
RETRYING = Limits(chunk_size=1024, chunk_buffer=2, retries=2, retry_wait_s=0.001)

# Leaving httpx's aiter_raw early (a body past the size) abandons its nested async
# generators, which trio closes with a ResourceWarning (see stages/_blob.py).
abandons_generators = pytest.mark.filterwarnings("ignore::ResourceWarning")


class Body(httpx.AsyncByteStream):
    """A response body in pieces, optionally failing after them; counts what was pulled."""

    def __init__(
        self, pieces: list[bytes], fail: Exception | None = None, forever: bytes = b""
    ) -> None:
        self.pieces, self.fail, self.forever = pieces, fail, forever
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.pulled += len(piece)
            yield piece
        while self.forever:
            self.pulled += len(self.forever)
            yield self.forever
        if self.fail is not None:
            raise self.fail


class FakeSource:
    """A BlobSource: stream_blob() over httpx.MockTransport, recording the calls."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
        self.calls: list[tuple[Reference, Digest, int]] = []

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[httpx.Response]:
        self.calls.append((ref, digest, offset))
        url = f"http://{ref.registry}/v2/{ref.repository}/blobs/{digest}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        async with self.client.stream("GET", url, headers=headers) as response:
            yield response


def body_of(
    data: bytes, status: int = 200, **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering with ``data`` streamed (as a network body is) and its length."""

    def respond(request: httpx.Request) -> httpx.Response:
        headers.setdefault("Content-Length", str(len(data)))
        return httpx.Response(status, stream=Body([data]), headers=headers)

    return respond


@contextlib.asynccontextmanager
async def source_for(
    respond: Callable[[httpx.Request], httpx.Response],
) -> AsyncIterator[FakeSource]:
    source = FakeSource(respond)
    try:
        yield source
    finally:
        await source.client.aclose()


async def run_stage(
    source: FakeSource, layer: Descriptor = LAYER, limits: Limits = LIMITS
) -> tuple[list[bytes], list[ProgressEvent], NetworkClock, BaseException | None]:
    """Run blob_stream alone; collect what it sends and what it raises."""
    chunks: list[bytes] = []
    events: list[ProgressEvent] = []
    clock = NetworkClock()
    error: BaseException | None = None
    send, receive = trio.open_memory_channel[bytes](limits.chunk_buffer)

    async def collect() -> None:
        async with receive:
            async for chunk in receive:
                chunks.append(chunk)

    async def stream() -> None:
        nonlocal error
        try:
            await blob_stream(source, REF, layer, limits, send, events.append, clock)
        except (SizeMismatch, Truncated, RegistryUnavailable) as exc:
            error = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            nursery.start_soon(stream)
    return chunks, events, clock, error


async def test_streams_the_raw_bytes_in_chunks() -> None:
    async with source_for(body_of(BLOB)) as source:
        chunks, events, clock, error = await run_stage(source)
    assert error is None
    assert b"".join(chunks) == BLOB
    assert max(map(len, chunks)) <= LIMITS.chunk_size
    assert source.calls == [(REF, LAYER.digest, 0)]
    # Throttled: the first chunk and the last always report, the rest at most every 0.1 s.
    assert [e.event for e in events] == ["layer-downloading"] * len(events)
    assert 2 <= len(events) <= len(chunks)
    assert [e.current for e in events] == sorted(e.current for e in events)
    assert events[-1].current == events[-1].total == len(BLOB)
    assert events[-1].digest == str(LAYER.digest) and events[-1].ref == str(REF)
    assert 0 < clock.first_byte_s <= clock.network_s


async def test_never_content_decodes() -> None:
    """A CDN's Content-Encoding: gzip must not make httpx inflate: the raw bytes are the blob."""
    import gzip

    blob = gzip.compress(b"layer bytes" * 1000)
    layer = Descriptor(
        MediaType.OCI_LAYER_GZIP, Digest.from_hex(hashlib.sha256(blob).hexdigest()), len(blob)
    )

    async with source_for(body_of(blob, **{"Content-Encoding": "gzip"})) as source:
        chunks, _, _, error = await run_stage(source, layer)
    assert error is None and b"".join(chunks) == blob


async def test_long_body_announced_by_content_length_is_refused_unread() -> None:
    body = Body([BLOB + b"x"])
    respond = lambda request: httpx.Response(  # noqa: E731
        200, stream=body, headers={"Content-Length": str(len(BLOB) + 1)}
    )
    async with source_for(respond) as source:
        chunks, _, _, error = await run_stage(source)
    assert isinstance(error, SizeMismatch)
    assert "announces" in str(error) and str(LAYER.digest) in str(error) and str(REF) in str(error)
    assert chunks == []


@abandons_generators
async def test_endless_body_stops_past_size() -> None:
    body = Body([BLOB], forever=b"z" * 100)
    async with source_for(lambda request: httpx.Response(200, stream=body)) as source:
        chunks, _, _, error = await run_stage(source)
    assert isinstance(error, SizeMismatch)
    assert sum(map(len, chunks)) <= len(BLOB)  # nothing past the size is passed on
    assert body.pulled <= len(BLOB) + LIMITS.chunk_size + 100  # and little is even read


async def test_short_body_announced_by_content_length() -> None:
    async with source_for(body_of(BLOB[:-1])) as source:
        chunks, _, _, error = await run_stage(source)
    assert isinstance(error, SizeMismatch)
    assert chunks == []


async def test_short_chunked_body_is_truncated() -> None:
    body = Body([BLOB[:3000], BLOB[3000:5000]])
    async with source_for(lambda request: httpx.Response(200, stream=body)) as source:
        chunks, _, _, error = await run_stage(source)
    assert isinstance(error, Truncated)
    assert "5000 of 10000" in str(error)
    assert b"".join(chunks) == BLOB[:5000]


async def test_connection_closed_mid_body_is_truncated() -> None:
    body = Body([BLOB[:4096]], fail=httpx.RemoteProtocolError("peer closed connection"))
    respond = lambda request: httpx.Response(  # noqa: E731
        200, stream=body, headers={"Content-Length": str(len(BLOB))}
    )
    async with source_for(respond) as source:
        _, _, _, error = await run_stage(source)
    assert isinstance(error, Truncated)
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)
    assert "4096 of 10000" in str(error) and str(LAYER.digest) in str(error)


@pytest.mark.parametrize(
    "failure", [httpx.ReadError("connection reset"), httpx.ReadTimeout("slow")]
)
async def test_transport_error_mid_body_is_registry_unavailable(failure: Exception) -> None:
    body = Body([BLOB[:2048]], fail=failure)
    async with source_for(lambda request: httpx.Response(200, stream=body)) as source:
        _, _, _, error = await run_stage(source)
    assert isinstance(error, RegistryUnavailable)
    assert error.__cause__ is failure
    assert "2048 of 10000" in str(error) and str(REF) in str(error)


async def test_empty_blob() -> None:
    layer = Descriptor(MediaType.OCI_LAYER, Digest.from_hex(hashlib.sha256(b"").hexdigest()), 0)
    async with source_for(body_of(b"")) as source:
        chunks, events, _, error = await run_stage(source, layer)
    assert error is None and chunks == [] and events == []


async def test_send_channel_is_closed_on_failure_too() -> None:
    """async with send: the consumer sees the end of the stream, the error goes up."""
    body = Body([BLOB[:2000]], fail=httpx.ReadError("reset"))
    send, receive = trio.open_memory_channel[bytes](10)
    async with source_for(lambda request: httpx.Response(200, stream=body)) as source:
        with trio.fail_after(10), pytest.raises(RegistryUnavailable):
            await blob_stream(source, REF, LAYER, LIMITS, send, None)
    received = []
    with pytest.raises(trio.EndOfChannel):
        while True:
            received.append(receive.receive_nowait())
    assert b"".join(received) == BLOB[:2000]
    assert max(map(len, received)) <= LIMITS.chunk_size
    receive.close()


# --- the slow-transfer check ------------------------------------------------------------


class Drip(httpx.AsyncByteStream):
    """``data`` a few bytes at a time, ``gap`` seconds apart: each gap far inside any read
    timeout, the whole far too slow."""

    def __init__(self, data: bytes, step: int, gap: float) -> None:
        self.data, self.step, self.gap = data, step, gap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.step):
            await trio.sleep(self.gap)
            yield self.data[start : start + self.step]


def dripping(data: bytes, step: int, gap: float) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, stream=Drip(data, step, gap))


@abandons_generators
async def test_slow_drip_fails_after_one_window() -> None:
    # 10 bytes every 20 ms is 500 B/s against a minimum of 10 kB/s over 0.3 s.
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, min_transfer_bytes_per_s=10_000, transfer_window_s=0.3
    )
    started = trio.current_time()
    async with source_for(dripping(BLOB, 10, 0.02)) as source:
        chunks, _, _, error = await run_stage(source, limits=limits)
    assert isinstance(error, RegistryUnavailable)
    assert "too slow" in str(error) and "minimum is 10000 B/s" in str(error)
    assert str(LAYER.digest) in str(error)
    # It stopped after about one window, long before the drip would have ended (4 s).
    assert trio.current_time() - started < 3.5
    assert len(b"".join(chunks)) < len(BLOB)


async def test_no_minimum_means_no_check() -> None:
    data = BLOB[:300]
    layer = Descriptor(
        MediaType.OCI_LAYER_GZIP, Digest.from_hex(hashlib.sha256(data).hexdigest()), len(data)
    )
    limits = Limits(chunk_size=1024, min_transfer_bytes_per_s=0, transfer_window_s=0.05)
    async with source_for(dripping(data, 10, 0.01)) as source:
        chunks, _, _, error = await run_stage(source, layer, limits)
    assert error is None and b"".join(chunks) == data


async def test_a_slow_consumer_is_not_a_slow_transfer() -> None:
    # The body is all there at once; the consumer takes 30 ms per chunk, so the whole
    # takes about 0.3 s: 33 kB/s, under the 1 MB/s minimum. But the download only waited
    # for the consumer, which is not the network's fault.
    limits = Limits(
        chunk_size=1024, chunk_buffer=0, min_transfer_bytes_per_s=1_000_000, transfer_window_s=0.1
    )
    received: list[bytes] = []
    send, receive = trio.open_memory_channel[bytes](0)

    async def slow_consumer() -> None:
        async with receive:
            async for chunk in receive:
                received.append(chunk)
                await trio.sleep(0.03)

    pieces = [BLOB[i : i + 1000] for i in range(0, len(BLOB), 1000)]
    respond = lambda request: httpx.Response(200, stream=Body(pieces))  # noqa: E731
    async with source_for(respond) as source:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_consumer)
                await blob_stream(source, REF, LAYER, limits, send, None)
    assert b"".join(received) == BLOB


# --- retries and resume -------------------------------------------------------------------


def cut_then(
    cut_at: int, then: Callable[[httpx.Request], httpx.Response], failure: Exception
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """The first answer breaks off after ``cut_at`` bytes with ``failure``; the rest are
    ``then``'s. Also returns the requests seen."""
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            body = Body([BLOB[:cut_at]], fail=failure)
            return httpx.Response(200, stream=body, headers={"Content-Length": str(len(BLOB))})
        return then(request)

    return respond, seen


def ranged(request: httpx.Request) -> httpx.Response:
    """206 from the byte the Range asks for, as the distribution registry answers."""
    start = int(request.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    return httpx.Response(
        206,
        stream=Body([BLOB[start:]]),
        headers={
            "Content-Length": str(len(BLOB) - start),
            "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}",
        },
    )


@pytest.mark.parametrize(
    "failure",
    [httpx.RemoteProtocolError("peer closed"), httpx.ReadError("reset"), httpx.ReadTimeout("")],
)
async def test_a_body_that_breaks_off_resumes_from_where_it_broke(failure: Exception) -> None:
    respond, seen = cut_then(4096, ranged, failure)
    async with source_for(respond) as source:
        chunks, events, _, error = await run_stage(source, limits=RETRYING)
    assert error is None
    assert b"".join(chunks) == BLOB  # every byte once, in order, across the seam
    assert source.calls == [(REF, LAYER.digest, 0), (REF, LAYER.digest, 4096)]
    assert seen[1].headers["Range"] == "bytes=4096-"
    retrying = [e for e in events if e.event == "layer-retrying"]
    assert [(e.current, e.total) for e in retrying] == [(4096, len(BLOB))]


async def test_a_server_that_ignores_range_resends_the_whole_blob_and_the_start_is_skipped() -> (
    None
):
    respond, _ = cut_then(4096 + 17, body_of(BLOB), httpx.RemoteProtocolError("peer closed"))
    async with source_for(respond) as source:
        chunks, _, _, error = await run_stage(source, limits=RETRYING)
    assert error is None
    assert b"".join(chunks) == BLOB
    assert source.calls[1][2] == 4096 + 17


async def test_the_skipped_start_of_a_resent_blob_counts_for_the_slow_transfer_check() -> None:
    """The whole blob again after a Range request, 100 bytes every 5 ms (20 kB/s, five
    times the minimum): the 8000 bytes skipped take about 0.4 s, four windows. Counting
    only the bytes kept, each window in the skip saw one read's 100 bytes: "too slow"."""
    limits = Limits(
        chunk_size=1024,
        chunk_buffer=2,
        retries=2,
        retry_wait_s=0.001,
        min_transfer_bytes_per_s=4000,
        transfer_window_s=0.1,
    )
    respond, seen = cut_then(8000, dripping(BLOB, 100, 0.005), httpx.ReadError("reset"))
    async with source_for(respond) as source:
        chunks, events, _, error = await run_stage(source, limits=limits)
    assert error is None
    assert b"".join(chunks) == BLOB  # the skipped bytes are not passed on twice
    assert seen[1].headers["Range"] == "bytes=8000-"
    # Progress counts the bytes kept: the resent start is not reported again.
    downloading = [e.current for e in events if e.event == "layer-downloading"]
    assert downloading == sorted(downloading) and downloading[-1] == len(BLOB)
    assert [e.current for e in events if e.event == "layer-retrying"] == [8000]


async def test_a_body_that_keeps_breaking_gives_up_after_the_retries() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        start = int(request.headers.get("Range", "bytes=0-")[6:-1])
        body = Body([BLOB[start : start + 1000]], fail=httpx.ReadError("reset"))
        return httpx.Response(
            206 if start else 200,
            stream=body,
            headers=(
                {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"} if start else {}
            ),
        )

    async with source_for(respond) as source:
        chunks, _, _, error = await run_stage(source, limits=RETRYING)
    assert isinstance(error, RegistryUnavailable)
    assert "3000 of 10000" in str(error) and "gave up after 3 attempts" in str(error)
    assert [offset for _, _, offset in source.calls] == [0, 1000, 2000]
    assert b"".join(chunks) == BLOB[:3000]


def stalling_from(offsets: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """Attempt n sends the blob from its Range up to ``offsets[n]``, then the server goes
    silent (a read timeout); past the list, the rest of the blob."""
    attempts = iter(offsets)

    def respond(request: httpx.Request) -> httpx.Response:
        start = int(request.headers.get("Range", "bytes=0-")[6:-1])
        stop = next(attempts, len(BLOB))
        body = Body([BLOB[start:stop]], fail=httpx.ReadTimeout("") if stop < len(BLOB) else None)
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"} if start else {}
        return httpx.Response(206 if start else 200, stream=body, headers=headers)

    return respond


async def test_a_body_that_sends_nothing_twice_in_a_row_is_given_up_on() -> None:
    """Each stall costs the read timeout (60 s by default): a server that stopped sending
    for good held the layer five of them. A stall that received nothing is tried once
    more, then not."""
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, retries=4, retry_wait_s=0.001, stall_progress_bytes=4096
    )
    async with source_for(stalling_from([4096, 4096, 4096])) as source:
        chunks, _, _, error = await run_stage(source, limits=limits)
    assert isinstance(error, RegistryUnavailable) and error.stalled_s == limits.read_timeout_s
    assert "2 times in a row, so not tried again" in str(error)
    # The first attempt moved the transfer before it stalled: not one of the two.
    assert [offset for _, _, offset in source.calls] == [0, 4096, 4096]
    assert b"".join(chunks) == BLOB[:4096]


async def test_stalls_after_bytes_arrived_are_retried_as_long_as_the_transfer_moves() -> None:
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, retries=4, retry_wait_s=0.001, stall_progress_bytes=1000
    )
    async with source_for(stalling_from([1000, 2000, 2000, 3000])) as source:
        chunks, events, _, error = await run_stage(source, limits=limits)
    assert error is None
    assert b"".join(chunks) == BLOB
    assert [offset for _, _, offset in source.calls] == [0, 1000, 2000, 2000, 3000]
    assert len([e for e in events if e.event == "layer-retrying"]) == 4


async def test_a_stall_after_less_than_stall_progress_bytes_is_one_more_stall_in_a_row() -> None:
    """A server that sends a little and then nothing, attempt after attempt: when any
    byte was progress, its stalls were never in a row and each of the retries waited out
    the read timeout. Less than ``stall_progress_bytes`` per attempt is no progress."""
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, retries=4, retry_wait_s=0.001, stall_progress_bytes=1001
    )
    async with source_for(stalling_from([1000, 2000, 3000])) as source:
        chunks, _, _, error = await run_stage(source, limits=limits)
    assert isinstance(error, RegistryUnavailable) and error.stalled_s == limits.read_timeout_s
    assert "2 times in a row, so not tried again" in str(error)
    assert [offset for _, _, offset in source.calls] == [0, 1000]
    assert b"".join(chunks) == BLOB[:2000]


def _resends_whole_and_stalls(stops: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """A server that ignores Range: each answer is a 200 with the blob from its start,
    which stalls (a read timeout) after the next of ``stops`` bytes; once they are used
    up, the whole blob."""
    left = iter(stops)

    def respond(request: httpx.Request) -> httpx.Response:
        stop = next(left, len(BLOB))
        body = Body([BLOB[:stop]], fail=httpx.ReadTimeout("") if stop < len(BLOB) else None)
        return httpx.Response(200, stream=body)

    return respond


async def test_a_stall_in_a_resent_blob_counts_the_bytes_skipped_as_progress() -> None:
    """A server that ignores Range resends the blob from its start and stalls 100 bytes
    past the last attempt's end: 5000 bytes and more arrive per attempt, 100 are kept.
    Counting the bytes kept, the second such stall was "2 times in a row" while the
    server was sending; counting those that arrived, the retries go on."""
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, retries=4, retry_wait_s=0.001, stall_progress_bytes=4096
    )
    async with source_for(_resends_whole_and_stalls([5000, 5100, 5200])) as source:
        chunks, events, _, error = await run_stage(source, limits=limits)
    assert error is None
    assert b"".join(chunks) == BLOB  # the resent starts are not passed on again
    assert [offset for _, _, offset in source.calls] == [0, 5000, 5100, 5200]
    assert [e.current for e in events if e.event == "layer-retrying"] == [5000, 5100, 5200]


@pytest.mark.parametrize(
    ("again", "says"),
    [
        (5000, "stalled where it had stalled before"),
        (3000, "stalled after 3000 bytes, short of byte 5000, where it had stopped before"),
    ],
)
async def test_a_server_that_ignores_range_and_stalls_at_the_same_place_is_given_up_on(
    again: int, says: str
) -> None:
    """A server that ignores Range resends the blob from its start and stalls at the same
    byte every time (or sooner): 5000 bytes arrive per attempt, none of them new.
    Counting the bytes that arrived, each such stall was progress, and the layer waited
    out the read timeout on every one of Limits.retries; an attempt that keeps no new
    byte is a stall in a row, whatever arrived, and the error says what the server did."""
    limits = Limits(
        chunk_size=1024, chunk_buffer=2, retries=6, retry_wait_s=0.001, stall_progress_bytes=4096
    )
    async with source_for(_resends_whole_and_stalls([5000, *[again] * 4])) as source:
        chunks, _, _, error = await run_stage(source, limits=limits)
    assert isinstance(error, RegistryUnavailable) and error.stalled_s == limits.read_timeout_s
    # The first attempt kept 5000 bytes before it stalled: not one of the two in a row.
    assert [offset for _, _, offset in source.calls] == [0, 5000, 5000]
    assert f"ignored Range: bytes=5000- (resent the blob from its start) and {says}" in str(error)
    assert "2 times in a row, so not tried again" in str(error)
    assert b"".join(chunks) == BLOB[:5000]


async def test_more_bytes_than_the_size_is_not_retried() -> None:
    async with source_for(body_of(BLOB + b"x")) as source:
        _, _, _, error = await run_stage(source, limits=RETRYING)
    assert isinstance(error, SizeMismatch)
    assert len(source.calls) == 1
