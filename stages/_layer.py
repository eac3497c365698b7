"""One layer, one streaming pass: the per-layer stages and their channels, wired here.

    blob_stream ─▶ chunks ─▶ inflate_stage ─▶ (inflate thread) ──▶ pipe ──▶ hash_stage
                              raw chunk, then its inflated pieces       (hash thread)
                                                                 raw: sha256 + xxh3, ingest.write
                                                                 inflated: sha256 (diffID)
    nursery exits cleanly ─▶ verify_layer (size, digest, stream end, diffID) ─▶ ingest.sync()

``chunks`` holds at most ``limits.chunk_buffer`` chunks (``largest_layer_chunk_buffer``
for the pull's critical path) and the pipe ``limits.pipe_buffer`` pieces, so memory
does not depend on the layer's size.
Verification is an explicit step after the nursery, never a reaction to a channel
closing. The store's rename into ``blobs/`` is the caller's next step.
"""

from __future__ import annotations

import functools
import hashlib
import time

import trio

from ._blob import BlobSource, NetworkClock, blob_stream
from ._codec import BlobHasher, LayerDecoder
from ._commit import IngestFile, sync_ingest, verify_layer
from ._config import Limits
from ._errors import NotFound
from ._events import LayerTimings, ProgressEvent, ProgressSink, VerifiedLayer
from ._groups import collapse_exception_group
from ._log import get_logger
from ._reference import Reference
from ._tee import HashPipe, Side, StageClock, hash_stage, inflate_stage
from ._types import Descriptor, Digest, MediaType

__all__ = ["fetch_layer"]

log = get_logger()


async def fetch_layer(
    source: BlobSource,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    ingest: IngestFile,
    *,
    limits: Limits,
    limiter: trio.CapacityLimiter,
    progress: ProgressSink | None,
    largest: bool = False,
) -> VerifiedLayer:
    """Download ``layer`` into ``ingest``, verified and synced; raise one ``ImagecError``.

    ``largest``: no larger layer of the pull is downloading, so this one is its critical
    path and its chunks get the deeper channel (``Limits.largest_layer_chunk_buffer``).

    Raises ``BlobError`` subclasses (size, digest, diffID, truncated or undecodable
    stream), ``RegistryError`` subclasses (from the request), ``StoreError`` (ingest).
    """
    started = time.perf_counter()
    ref_text, digest = str(ref), str(layer.digest)
    depth = limits.largest_layer_chunk_buffer if largest else limits.chunk_buffer
    chunks_send, chunks_recv = trio.open_memory_channel[bytes](depth)
    pipe = HashPipe(limits.pipe_buffer)

    hasher, diff_hasher = BlobHasher(), hashlib.sha256()
    decoder = LayerDecoder(
        layer.media_type,
        layer.size,
        limits,
        ref=ref_text,
        digest=digest,
        sink=functools.partial(pipe.put, Side.INFLATED),
    )
    net = NetworkClock()
    hash_clock, inflate_clock, write_clock = StageClock(), StageClock(), StageClock()
    # The hash thread has a limiter of its own: it must never wait for a token held by
    # an inflate thread that is itself waiting for the hash thread to drain the pipe.
    hash_limiter = trio.CapacityLimiter(1)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blob_stream, source, ref, layer, limits, chunks_send, progress, net)
            nursery.start_soon(inflate_stage, decoder, pipe, limiter, inflate_clock, chunks_recv)
            nursery.start_soon(
                functools.partial(
                    hash_stage,
                    pipe,
                    hasher,
                    diff_hasher,
                    ingest,
                    hash_limiter,
                    (hash_clock, write_clock),
                    ref=ref_text,
                    digest=digest,
                )
            )
    except BaseExceptionGroup as group:
        failure = collapse_exception_group(group)
    if failure is not None:  # raised here, not in the handler: see stages/_groups.py
        if (
            isinstance(failure, NotFound)
            and layer.media_type in MediaType.LAYERS_NONDISTRIBUTABLE
            and not (layer.urls and limits.max_layer_urls)
        ):
            # With URLs to try, blob_stream's error names each source already.
            why = (
                "fetching from the URLs its descriptor names is turned off"
                " (Limits.max_layer_urls is 0)"
                if layer.urls
                else "its descriptor names no URLs to fetch it from"
            )
            raise NotFound(
                f"layer {digest} is a non-distributable (foreign) layer, which the registry "
                f"does not serve, and {why}",
                ref=ref_text,
                digest=digest,
            ) from failure
        raise failure from failure.__cause__

    if progress is not None:
        progress(ProgressEvent("layer-verifying", ref_text, digest, layer.size, layer.size))
    sums = hasher.finish()
    decoded = verify_layer(ref_text, layer, diff_id, sums, decoder, diff_hasher.hexdigest())
    fsync_s = await sync_ingest(ingest, limiter, ref=ref_text, digest=digest)

    timings = LayerTimings(
        wall_s=time.perf_counter() - started,
        first_byte_s=net.first_byte_s,
        network_s=net.network_s,
        hash_s=hash_clock.seconds,
        inflate_s=inflate_clock.seconds,
        write_s=write_clock.seconds,
        fsync_s=fsync_s,
    )
    _log_layer(layer, decoded.size, timings, depth)
    return VerifiedLayer(layer, diff_id, decoded.size, sums.xxh3, timings)


def _log_layer(
    layer: Descriptor, uncompressed: int, timings: LayerTimings, chunk_buffer: int
) -> None:
    """The canonical line for one layer: sizes, stage seconds and throughput, and the
    depth of its chunk channel (deeper for the pull's critical path)."""
    wall = timings.wall_s
    log.info(
        "layer fetched",
        digest=str(layer.digest),
        media_type=layer.media_type,
        size=layer.size,
        uncompressed_size=uncompressed,
        seconds=round(wall, 3),
        mb_per_s=round(layer.size / 1e6 / wall, 1) if wall > 0 else None,
        first_byte_s=round(timings.first_byte_s, 3),
        network_s=round(timings.network_s, 3),
        hash_s=round(timings.hash_s, 3),
        inflate_s=round(timings.inflate_s, 3),
        write_s=round(timings.write_s, 3),
        fsync_s=round(timings.fsync_s, 3),
        chunk_buffer=chunk_buffer,
    )
