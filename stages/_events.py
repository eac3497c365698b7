"""Messages the stages hand upward: progress events and verified results.

All frozen: a stage creates them and never changes them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._types import Descriptor, Digest

__all__ = ["LayerTimings", "ProgressEvent", "ProgressSink", "VerifiedLayer"]


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened during a pull, for progress displays and ``--json``.

    ``event`` is one of:
      ``resolving``          the reference is being resolved (``ref`` only)
      ``resolved``           manifest and config fetched; ``digest`` = the digest the tag
                             resolved to (the index's for a multi-platform tag),
                             ``total`` = the number of distinct layers (a layer
                             listed twice has one set of events)
      ``layer-waiting``      a layer is queued (``digest``, ``total`` = compressed size)
      ``layer-exists``       a layer is already in the store
      ``layer-shared``       another pull (of this process or another) downloaded it
                             while we waited
      ``layer-downloading``  bytes arrived (``current`` of ``total``)
      ``layer-retrying``     the download failed transiently and resumes from ``current``
                             after a wait
      ``layer-verifying``    all bytes in; digest and diffID being checked
      ``layer-complete``     verified and committed
      ``pull-complete``      the image is committed and tagged (``digest`` as in resolved)
    """

    event: str
    ref: str
    digest: str | None = None
    current: int = 0
    total: int | None = None


ProgressSink = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class LayerTimings:
    """Seconds spent in each stage of one layer (CPU stages summed over chunks).

    Stages overlap, so these add up to more than the layer's wall time.
    """

    wall_s: float = 0.0
    first_byte_s: float = 0.0
    network_s: float = 0.0
    hash_s: float = 0.0
    inflate_s: float = 0.0
    write_s: float = 0.0
    fsync_s: float = 0.0
    commit_s: float = 0.0


@dataclass(frozen=True)
class VerifiedLayer:
    """A layer whose size, digest and diffID were all checked, ready to commit.

    ``xxh3`` is the xxh3_128 hex digest of the stored (compressed) bytes, recorded so
    that ``verify`` can re-check the store quickly.
    """

    descriptor: Descriptor
    diff_id: Digest
    uncompressed_size: int
    xxh3: str
    timings: LayerTimings
