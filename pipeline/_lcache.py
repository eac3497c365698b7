"""LCache: one download per layer among the pulls that share a store object.

VIC's imagec kept a process-wide layer cache so that two pulls of images sharing a layer
fetched it once. Here it lives on the opened store (``store.lcache``), keyed by the
compressed digest, with these states::

    absent ──download()──▶ held (one holder, any number of waiters, FIFO)
       ▲                        │ holder exits (committed, failed or cancelled)
       └── last user leaves ◀───┴──▶ the next waiter becomes the holder

"Committed" is not a state of the cache: it is a fact of the store
(``Store.committed_layer``). A caller looks the layer up in the store once it holds the
slot, never before (a layer committed between a lookup and the slot was downloaded
again), and skips the download if it is there: "shared" when the caller had to wait
(``ticket.waited``), "exists" otherwise. If the holder failed, the lookup finds nothing
and the waiter downloads the layer itself. Because the holder's slot is released on
every exit, an exception or a cancellation in one pull never leaves the others waiting
forever, and one pull cancelling does not cancel the download of another (each waiter
runs its own download in its own task).

Later, the cross-process claim (a row in the store's database plus a file lock, a dead
owner's claim recovered) goes inside ``download`` around the in-process lock, without
changing this interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from stages._types import Digest

__all__ = ["DownloadTicket", "LCache"]


@dataclass(frozen=True)
class DownloadTicket:
    """The right to download one layer, held until the ``download`` block exits.

    ``waited`` is True when another holder had the digest first and this caller waited
    for it (the layer, if the store has it now, was shared rather than already there).
    """

    digest: Digest
    waited: bool


@dataclass
class _Entry:
    # trio.Lock is fair: on release it hands ownership straight to the longest waiter.
    lock: trio.Lock
    users: int = 0


class LCache:
    """Per-digest mutual exclusion for layer downloads inside one process.

    Not thread-safe: use it from the trio thread that runs the pulls. The dictionary only
    holds digests that some task is holding or waiting for, so it never grows with the
    number of layers ever pulled.
    """

    def __init__(self) -> None:
        self._entries: dict[Digest, _Entry] = {}

    def busy(self, digest: Digest) -> bool:
        """Whether some task holds (or waits for) ``digest`` right now."""
        return digest in self._entries

    @contextlib.asynccontextmanager
    async def download(
        self, digest: Digest, *, on_wait: Callable[[], None] | None = None
    ) -> AsyncIterator[DownloadTicket]:
        """Hold the download slot of ``digest`` for the duration of the block.

        If another task holds it, wait (calling ``on_wait`` once first, e.g. to report
        "layer-shared") and take the slot when that holder leaves. The slot is released
        however the block exits.
        """
        entry = self._entries.get(digest)
        if entry is None:
            entry = self._entries[digest] = _Entry(trio.Lock())
        entry.users += 1
        try:
            waited = entry.lock.locked()
            if waited and on_wait is not None:
                on_wait()
            async with entry.lock:
                yield DownloadTicket(digest, waited)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[digest]
