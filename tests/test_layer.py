"""fetch_layer end to end over a fake BlobSource (httpx.MockTransport), with a simple
IngestFile writing to tmp_path; and the ExceptionGroup collapsing it relies on.

The real-registry runs of the same path are in tests/test_pull*.py.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import random
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio
import xxhash
import zstandard

from stages._config import Limits
from stages._errors import (
    DecompressError,
    DiffIDMismatch,
    DigestMismatch,
    ImagecError,
    NotFound,
    RegistryUnavailable,
    SizeMismatch,
    StoreError,
    Truncated,
)
from stages._events import ProgressEvent
from stages._groups import collapse_exception_group
from stages._http import url_authority
from stages._layer import fetch_layer
from stages._redact import shown_url
from stages._reference import Reference
from stages._types import Descriptor, Digest, MediaType

REF = Reference("reg.test", "team/app", "1.0")
LIMITS = Limits(chunk_size=64 * 1024, chunk_buffer=2)

# Leaving httpx's aiter_raw early (a body past the size, a cancelled download) abandons
# its nested async generators, which trio closes with a ResourceWarning (stages/_blob.py).
abandons_generators = pytest.mark.filterwarnings("ignore::ResourceWarning")


def make_tar(seed: int = 1, size: int = 2_000_000) -> bytes:
    rng = random.Random(seed)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(4):
            body = bytes(rng.choices(b"abcdefgh \n", k=size // 4)) + os.urandom(1000)
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


TAR = make_tar()
DIFF_ID = Digest.from_hex(hashlib.sha256(TAR).hexdigest())
BLOBS = {
    MediaType.DOCKER_LAYER_GZIP: gzip.compress(TAR),
    MediaType.OCI_LAYER_ZSTD: zstandard.ZstdCompressor().compress(TAR),
    MediaType.OCI_LAYER: TAR,
}


def descriptor(media_type: str, blob: bytes) -> Descriptor:
    return Descriptor(media_type, Digest.from_hex(hashlib.sha256(blob).hexdigest()), len(blob))


class Body(httpx.AsyncByteStream):
    def __init__(
        self,
        data: bytes,
        piece: int = 10_000,
        fail: Exception | None = None,
        length: int | None = None,
    ) -> None:
        self.data, self.piece, self.fail = data, piece, fail
        self.length = len(data) if length is None else length  # for Content-Length
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.piece):
            self.pulled += len(self.data[i : i + self.piece])
            yield self.data[i : i + self.piece]
        if self.fail is not None:
            raise self.fail


class FakeSource:
    """A BlobSource on httpx.MockTransport; ``body(request)`` makes each response body."""

    def __init__(self, body: Callable[[], Body], *, content_length: bool = True) -> None:
        self.bodies: list[Body] = []

        def respond(request: httpx.Request) -> httpx.Response:
            assert request.headers["accept-encoding"] == "identity"
            stream = body()
            self.bodies.append(stream)
            headers = {"Content-Length": str(stream.length)} if content_length else {}
            return httpx.Response(200, stream=stream, headers=headers)

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(respond))

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[httpx.Response]:
        url = f"http://{ref.registry}/v2/{ref.repository}/blobs/{digest}"
        headers = {"Accept-Encoding": "identity"}
        async with self.client.stream("GET", url, headers=headers) as response:
            yield response


class FileIngest:
    """The store's partial file, reduced to what the IngestFile protocol asks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.synced = False

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.synced = True


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[FileIngest]:
    ingest = FileIngest(tmp_path / "ingest")
    yield ingest
    ingest.file.close()


async def fetch(
    blob: bytes,
    layer: Descriptor,
    ingest: FileIngest,
    *,
    diff_id: Digest = DIFF_ID,
    body: Callable[[], Body] | None = None,
    content_length: bool = True,
    events: list[ProgressEvent] | None = None,
    limits: Limits = LIMITS,
) -> tuple[FakeSource, object]:
    source = FakeSource(body or (lambda: Body(blob)), content_length=content_length)
    try:
        with trio.fail_after(20):
            verified = await fetch_layer(
                source,
                REF,
                layer,
                diff_id,
                ingest,
                limits=limits,
                limiter=trio.CapacityLimiter(4),
                progress=events.append if events is not None else None,
            )
    finally:
        await source.client.aclose()
    return source, verified


class HeldIngest(FileIngest):
    """An ingest file whose writes wait until ``release()``: a store that stalls."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.released = threading.Event()

    def write(self, data: bytes) -> None:
        self.released.wait(20)
        super().write(data)

    def release(self) -> None:
        self.released.set()


class MarkedBody(Body):
    """A body that sets ``reached`` once ``mark`` bytes of it were pulled."""

    def __init__(self, data: bytes, piece: int, mark: int) -> None:
        super().__init__(data, piece)
        self.mark, self.reached = mark, trio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in super().__aiter__():
            if self.pulled >= self.mark:
                self.reached.set()
            yield piece


@abandons_generators  # when it fails: the download is cancelled mid-body
@pytest.mark.parametrize("largest", [True, False], ids=["largest", "other"])
async def test_the_largest_layer_downloads_further_ahead_of_a_stalled_store(
    tmp_path: Path, largest: bool
) -> None:
    """The pull's largest layer (its critical path) may run ``largest_layer_chunk_buffer``
    chunks ahead of its stages, any other ``chunk_buffer``: with the store's writes held
    up, the largest layer's download goes on until that many chunks wait, far beyond what
    the stages and ``chunk_buffer`` hold, where any other's stops (and, with only
    ``chunk_buffer``, the largest layer's stopped)."""
    chunk = 16 * 1024
    limits = replace(LIMITS, chunk_size=chunk, chunk_buffer=1, largest_layer_chunk_buffer=40)
    layer = descriptor(MediaType.OCI_LAYER, TAR)  # uncompressed: one raw chunk per piece
    body = MarkedBody(TAR, chunk, mark=40 * chunk)
    source = FakeSource(lambda: body)  # one request: the stream never breaks
    ingest = HeldIngest(tmp_path / "ingest")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    fetch_layer, source, REF, layer, DIFF_ID, ingest, limits=limits,
                    limiter=trio.CapacityLimiter(4), progress=None, largest=largest,
                )
            )  # fmt: skip
            try:
                with trio.fail_after(10) if largest else trio.move_on_after(2):
                    await body.reached.wait()
                reached, pulled = body.reached.is_set(), body.pulled  # before the store goes on
            finally:
                ingest.release()  # here: the nursery waits for the hash thread it holds up
    finally:
        ingest.file.close()
        await source.client.aclose()
    assert reached is largest, pulled
    assert ingest.synced and source.bodies == [body]


class MissingBlobSource:
    """A registry that answers 404 for every blob, as for a foreign layer it never held."""

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[httpx.Response]:
        raise NotFound(f"blob {digest} not found in {ref}", ref=str(ref), digest=str(digest))
        yield httpx.Response(404)  # pragma: no cover (makes this an async generator)


async def test_a_foreign_layer_the_registry_lacks_is_named_as_such(ingest: FileIngest) -> None:
    # It said only "blob not found ... check the repository name, tag or digest".
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    foreign = descriptor(MediaType.DOCKER_FOREIGN_LAYER_GZIP, blob)
    with pytest.raises(NotFound, match="is a non-distributable \\(foreign\\) layer") as info:
        await fetch_layer(
            MissingBlobSource(), REF, foreign, DIFF_ID, ingest, limits=LIMITS,
            limiter=trio.CapacityLimiter(4), progress=None,
        )  # fmt: skip
    assert info.value.digest == str(foreign.digest) and info.value.ref == str(REF)
    plain = descriptor(MediaType.DOCKER_LAYER_GZIP, blob)
    with pytest.raises(NotFound, match="not found in"):
        await fetch_layer(
            MissingBlobSource(), REF, plain, DIFF_ID, ingest, limits=LIMITS,
            limiter=trio.CapacityLimiter(4), progress=None,
        )  # fmt: skip


@pytest.mark.parametrize("media_type", list(BLOBS))
async def test_happy_path(media_type: str, ingest: FileIngest) -> None:
    blob = BLOBS[media_type]
    layer = descriptor(media_type, blob)
    events: list[ProgressEvent] = []
    _, verified = await fetch(blob, layer, ingest, events=events)

    assert verified.descriptor == layer  # type: ignore[attr-defined]
    assert verified.diff_id == DIFF_ID  # type: ignore[attr-defined]
    assert verified.uncompressed_size == len(TAR)  # type: ignore[attr-defined]
    assert verified.xxh3 == xxhash.xxh3_128_hexdigest(blob)  # type: ignore[attr-defined]
    assert ingest.synced
    assert ingest.path.read_bytes() == blob

    timings = verified.timings  # type: ignore[attr-defined]
    assert timings.wall_s >= timings.network_s >= timings.first_byte_s > 0
    assert timings.hash_s > 0 and timings.inflate_s > 0 and timings.write_s > 0
    assert timings.fsync_s > 0

    kinds = [e.event for e in events]
    assert kinds[-1] == "layer-verifying" and set(kinds[:-1]) == {"layer-downloading"}
    assert events[-2].current == events[-2].total == len(blob)
    assert all(e.digest == str(layer.digest) and e.ref == str(REF) for e in events)


async def test_gzip_layer_of_many_members_and_odd_chunking(ingest: FileIngest) -> None:
    blob = b"".join(gzip.compress(TAR[i : i + 300_000]) for i in range(0, len(TAR), 300_000))
    layer = descriptor(MediaType.OCI_LAYER_GZIP, blob)
    _, verified = await fetch(blob, layer, ingest, body=lambda: Body(blob, piece=777))
    assert verified.diff_id == DIFF_ID  # type: ignore[attr-defined]


@pytest.mark.parametrize("media_type", list(BLOBS))
async def test_flipped_byte_is_a_digest_mismatch(media_type: str, ingest: FileIngest) -> None:
    blob = BLOBS[media_type]
    layer = descriptor(media_type, blob)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x04
    with pytest.raises(DigestMismatch) as info:
        await fetch(bytes(bad), layer, ingest)
    message = str(info.value)
    assert str(layer.digest) in message and str(REF) in message
    assert hashlib.sha256(bad).hexdigest() in message  # names the actual digest too


@pytest.mark.parametrize("media_type", list(BLOBS))
async def test_right_digest_wrong_diff_id(media_type: str, ingest: FileIngest) -> None:
    blob = BLOBS[media_type]
    wrong = Digest.from_hex(hashlib.sha256(b"another tar").hexdigest())
    with pytest.raises(DiffIDMismatch) as info:
        await fetch(blob, descriptor(media_type, blob), ingest, diff_id=wrong)
    assert str(wrong) in str(info.value) and DIFF_ID.hex in str(info.value)


async def test_truncated_gzip_stream_with_its_own_digest(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP][:-100]
    with pytest.raises(Truncated, match="cut short"):
        await fetch(blob, descriptor(MediaType.DOCKER_LAYER_GZIP, blob), ingest)


async def test_mislabelled_layer(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.OCI_LAYER_ZSTD]
    with pytest.raises(DecompressError, match="bytes are zstd"):
        await fetch(blob, descriptor(MediaType.OCI_LAYER_GZIP, blob), ingest)


async def test_short_body(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    layer = descriptor(MediaType.DOCKER_LAYER_GZIP, blob)
    with pytest.raises(Truncated, match="ended after"):
        await fetch(blob[:-1000], layer, ingest, content_length=False)


async def test_body_broken_off(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.OCI_LAYER_ZSTD]
    layer = descriptor(MediaType.OCI_LAYER_ZSTD, blob)
    failure = httpx.ReadError("connection reset by peer")
    with pytest.raises(RegistryUnavailable, match="connection reset"):
        await fetch(
            blob, layer, ingest, body=lambda: Body(blob[:200_000], fail=failure, length=len(blob))
        )


@abandons_generators
async def test_long_body_is_not_read_past_its_size(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    layer = descriptor(MediaType.DOCKER_LAYER_GZIP, blob)
    longer = blob + os.urandom(5_000_000)
    with pytest.raises(SizeMismatch, match="more than the"):
        await fetch(longer, layer, ingest, content_length=False)
    # what was pulled from the body: at most one socket-read / chunk past the size
    assert ingest.path.stat().st_size <= len(blob)


@abandons_generators
async def test_long_body_pull_count(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.OCI_LAYER]
    layer = descriptor(MediaType.OCI_LAYER, blob)
    bodies: list[Body] = []

    def body() -> Body:
        bodies.append(Body(blob + b"\0" * 50_000_000, piece=10_000))
        return bodies[-1]

    with pytest.raises(SizeMismatch):
        await fetch(blob, layer, ingest, body=body, content_length=False)
    assert bodies[0].pulled <= len(blob) + LIMITS.chunk_size + 10_000


class FailingIngest(FileIngest):
    def __init__(self, path: Path, *, write: bool = False, sync: bool = False) -> None:
        super().__init__(path)
        self.fail_write, self.fail_sync = write, sync

    def write(self, data: bytes) -> None:
        if self.fail_write:
            raise OSError(28, "No space left on device")
        super().write(data)

    def sync(self) -> None:
        if self.fail_sync:
            raise OSError(5, "Input/output error")
        super().sync()


@abandons_generators
async def test_disk_full_is_one_store_error(tmp_path: Path) -> None:
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    ingest = FailingIngest(tmp_path / "ingest", write=True)
    try:
        with pytest.raises(StoreError, match="No space left") as info:
            await fetch(blob, descriptor(MediaType.DOCKER_LAYER_GZIP, blob), ingest)
    finally:
        ingest.file.close()
    assert not isinstance(info.value, BaseExceptionGroup)
    assert isinstance(info.value.__cause__, OSError)


async def test_fsync_failure_is_a_store_error(tmp_path: Path) -> None:
    blob = BLOBS[MediaType.OCI_LAYER]
    ingest = FailingIngest(tmp_path / "ingest", sync=True)
    try:
        with pytest.raises(StoreError, match="Input/output error"):
            await fetch(blob, descriptor(MediaType.OCI_LAYER, blob), ingest)
    finally:
        ingest.file.close()


async def test_bomb_is_refused(ingest: FileIngest) -> None:
    blob = gzip.compress(b"\0" * 20_000_000, compresslevel=9)
    diff_id = Digest.from_hex(hashlib.sha256(b"\0" * 20_000_000).hexdigest())
    limits = Limits(
        chunk_size=64 * 1024,
        chunk_buffer=2,
        max_compression_ratio=50,
        min_uncompressed_allowance_bytes=1 << 20,
    )
    with pytest.raises(DecompressError, match="bomb"):
        await fetch(
            blob, descriptor(MediaType.OCI_LAYER_GZIP, blob), ingest, diff_id=diff_id, limits=limits
        )


# --- collapse_exception_group -------------------------------------------------------------


def test_collapse_returns_the_first_error_with_the_others_as_notes() -> None:
    first, second = DigestMismatch("first"), Truncated("second")
    group = BaseExceptionGroup(
        "x", [first, BaseExceptionGroup("y", [second, trio.Cancelled._create()])]
    )
    error = collapse_exception_group(group)
    assert error is first
    assert any("second" in note for note in error.__notes__)


def test_collapse_ignores_consequences_of_the_failure() -> None:
    root = StoreError("disk full")
    group = ExceptionGroup("x", [root, trio.BrokenResourceError()])
    assert collapse_exception_group(group) is root


def test_collapse_keeps_a_group_with_a_bug_in_it() -> None:
    group = ExceptionGroup("x", [StoreError("disk full"), TypeError("a bug")])
    assert collapse_exception_group(group) is group


def test_collapse_makes_a_group_of_cancellations_one() -> None:
    # A pull cancelled before its layers started raised one Cancelled, one cancelled
    # while they ran a group of them: `except trio.Cancelled` saw only the first.
    first, second = trio.Cancelled._create(), trio.Cancelled._create()
    group = BaseExceptionGroup("x", [first, BaseExceptionGroup("y", [second])])
    assert collapse_exception_group(group) is first
    mixed = BaseExceptionGroup("x", [first, KeyboardInterrupt()])
    assert collapse_exception_group(mixed) is mixed


@abandons_generators
async def test_a_layer_cancelled_while_it_runs_raises_one_cancelled(ingest: FileIngest) -> None:
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    layer = descriptor(MediaType.DOCKER_LAYER_GZIP, blob)
    source = FakeSource(lambda: SlowBody(blob, piece=1000))
    raised: list[BaseException] = []
    try:
        with trio.fail_after(10), trio.move_on_after(0.2) as scope:
            try:
                await fetch_layer(
                    source, REF, layer, DIFF_ID, ingest, limits=LIMITS,
                    limiter=trio.CapacityLimiter(4), progress=None,
                )  # fmt: skip
            except BaseException as exc:
                raised.append(exc)
                raise
    finally:
        await source.client.aclose()
    assert scope.cancelled_caught
    assert [type(exc) for exc in raised] == [trio.Cancelled]


def test_collapse_keeps_keyboard_interrupt() -> None:
    group = BaseExceptionGroup("x", [ImagecError("e"), KeyboardInterrupt()])
    assert collapse_exception_group(group) is group


class SlowBody(Body):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.piece):
            await trio.sleep(0.01)
            self.pulled += len(self.data[i : i + self.piece])
            yield self.data[i : i + self.piece]


@abandons_generators
async def test_cancelled_mid_download_is_a_plain_cancellation(ingest: FileIngest) -> None:
    """A caller's deadline cancels the stages cleanly: no ImagecError, no group, no hang."""
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    layer = descriptor(MediaType.DOCKER_LAYER_GZIP, blob)
    source = FakeSource(lambda: SlowBody(blob, piece=1000))
    try:
        with trio.fail_after(10), trio.move_on_after(0.2) as scope:
            await fetch_layer(
                source,
                REF,
                layer,
                DIFF_ID,
                ingest,
                limits=LIMITS,
                limiter=trio.CapacityLimiter(4),
                progress=None,
            )
    finally:
        await source.client.aclose()
    assert scope.cancelled_caught
    assert not ingest.synced
    assert 0 < source.bodies[0].pulled < len(blob)


class RegistryThenURLs:
    """A registry whose body breaks off after ``cut`` bytes, and URLs (a foreign layer's)
    each answering per ``url_status``: 206 from the offset asked, or that status."""

    def __init__(self, blob: bytes, cut: int, url_status: dict[str, int]) -> None:
        self.asked: list[tuple[str, int]] = []

        def respond(request: httpx.Request) -> httpx.Response:
            offset = int(request.headers.get("range", "bytes=0-")[6:-1])
            place = "registry" if request.url.host == "reg.test" else str(request.url)
            self.asked.append((place, offset))
            if place == "registry":
                cut_off = httpx.RemoteProtocolError("peer closed connection")
                return httpx.Response(200, stream=Body(blob[:cut], fail=cut_off))
            status = url_status[place]
            if status != 206:
                return httpx.Response(status)
            return httpx.Response(206, stream=Body(blob[offset:]), headers={
                "Content-Range": f"bytes {offset}-{len(blob) - 1}/{len(blob)}"
            })  # fmt: skip

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(respond))

    @contextlib.asynccontextmanager
    async def _get(self, url: str, offset: int) -> AsyncIterator[httpx.Response]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self.client.stream("GET", url, headers=headers) as response:
            if response.status_code == 404:
                raise NotFound(f"{url} answered HTTP 404")
            yield response

    def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return self._get(f"http://reg.test/v2/{ref.repository}/blobs/{digest}", offset)

    def stream_url(
        self, ref: Reference, url: str, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return self._get(url, offset)

    def server_named(self, ref: Reference, url: httpx.URL) -> str:
        return url_authority(url)

    def url_shown(self, url: str) -> str:
        return shown_url(url)


async def test_a_foreign_layer_broken_off_by_the_registry_is_finished_from_its_urls(
    ingest: FileIngest,
) -> None:
    # The registry's transfer broke after a third of the bytes and its retries ran out:
    # the first URL lacks the blob, the second serves the rest; the third is not asked.
    blob = BLOBS[MediaType.DOCKER_LAYER_GZIP]
    cut = len(blob) // 3
    urls = ("https://a.test/missing", "https://b.test/layer", "https://c.test/never")
    source = RegistryThenURLs(blob, cut, {urls[0]: 404, urls[1]: 206, urls[2]: 206})
    foreign = replace(descriptor(MediaType.DOCKER_FOREIGN_LAYER_GZIP, blob), urls=urls)
    try:
        with trio.fail_after(20):
            verified = await fetch_layer(
                source, REF, foreign, DIFF_ID, ingest, limits=replace(LIMITS, retries=0),
                limiter=trio.CapacityLimiter(4), progress=None,
            )  # fmt: skip
    finally:
        await source.client.aclose()
    assert verified.descriptor == foreign and verified.diff_id == DIFF_ID
    assert source.asked == [("registry", 0), (urls[0], cut), (urls[1], cut)]
    assert ingest.path.read_bytes() == blob
