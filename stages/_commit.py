"""Verification of one layer after its stages finished, and the fsync of its ingest file.

This is the explicit step that runs after the layer's nursery exited cleanly (never on
end-of-channel): size, then digest, then the compressed stream's own end, then diffID.
The digest comes before the decompressor's verdict so that a byte flipped in transit is
reported as the ``DigestMismatch`` it is. Making the file visible (the atomic rename into
``blobs/``) is the store's ``commit_layer``, called by the pull after this returned.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio

from ._codec import BlobSums, Decoded, LayerDecoder
from ._errors import DiffIDMismatch, DigestMismatch, SizeMismatch, StoreError
from ._types import Descriptor, Digest

__all__ = ["IngestFile", "sync_ingest", "verify_layer"]


class IngestFile(Protocol):
    """The store's partial file for one blob. Methods are sync: called in a worker thread."""

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Flush and fsync."""
        ...


def verify_layer(
    ref: str,
    layer: Descriptor,
    diff_id: Digest,
    sums: BlobSums,
    decoder: LayerDecoder,
    uncompressed_sha256: str | None = None,
) -> Decoded:
    """Check everything the manifest and config promised; raise the first broken promise.

    ``uncompressed_sha256`` is the diffID hash computed outside the decoder (when it was
    given a sink); an uncompressed layer's diffID is its digest.

    Raises ``SizeMismatch``, ``DigestMismatch``, ``Truncated`` / ``DecompressError`` (from
    ``decoder.finish()``) or ``DiffIDMismatch``, each naming expected and actual values.
    """
    digest = str(layer.digest)
    if sums.size != layer.size:
        raise SizeMismatch(
            f"layer {digest}: {sums.size} bytes arrived, its descriptor says {layer.size}",
            ref=ref,
            digest=digest,
        )
    if sums.sha256 != layer.digest.hex:
        raise DigestMismatch(
            f"layer {digest}: the bytes received hash to sha256:{sums.sha256}; the registry's "
            f"copy is corrupt or was changed in transit. Pull again; if it persists, the "
            f"blob in the registry is damaged",
            ref=ref,
            digest=digest,
        )
    decoded = decoder.finish()
    hashed_apart = decoded.diff_id or uncompressed_sha256 or ""
    actual = sums.sha256 if decoder.plain else hashed_apart
    if actual != diff_id.hex:
        raise DiffIDMismatch(
            f"layer {digest}: its uncompressed content hashes to sha256:{actual}, but the "
            f"image config's diff_id is {diff_id}; the image's config does not match its "
            f"layers",
            ref=ref,
            digest=digest,
        )
    return decoded


async def sync_ingest(
    ingest: IngestFile, limiter: trio.CapacityLimiter, *, ref: str, digest: str
) -> float:
    """fsync the ingest file in a worker thread; return the seconds the fsync took."""
    try:
        return await trio.to_thread.run_sync(_timed_sync, ingest, limiter=limiter)
    except OSError as exc:
        raise StoreError(
            f"cannot sync the downloaded layer {digest} to disk: {exc}", ref=ref, digest=digest
        ) from exc


def _timed_sync(ingest: IngestFile) -> float:
    started = time.perf_counter()
    ingest.sync()
    return time.perf_counter() - started
