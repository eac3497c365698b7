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

Across processes (and across ``Store`` objects of one store, and across the trio runs of
several threads) the same holds through the store's claim (``Store.try_claim_layer``: a
file lock in ``ingest/``, which the kernel releases when its holder dies): the holder of
the in-process slot takes the claim too before it looks the layer up, polling every
``CLAIM_POLL_S`` while another process holds it. Only the slot's holder polls, so a
process asks once per layer, however many of its pulls wait. A dead owner's claim is
free at once; a waiter then finds the layer absent and downloads it itself. A stopped
one's is not: after ``CLAIM_NOTICE_S`` a warning names the layer and the store (the wait
goes on: a live owner may take minutes).

The pulls of one store also share its download slots (``download_budget``), so that
together they download no more layers at once than one pull would.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from stages._log import get_logger
from stages._types import Digest

log = get_logger()

__all__ = ["CLAIM_NOTICE_S", "CLAIM_POLL_S", "Claim", "DownloadTicket", "LCache"]

# How often a layer claimed by another process is asked for again. Its holder is
# downloading it: a twentieth of a second is nothing beside that, and a claim costs an
# open, a flock and a close.
CLAIM_POLL_S = 0.05
# How long a layer another process holds is waited for before a warning says so. That
# process may be downloading it for minutes, and the wait is not cut short; but one
# stopped with Ctrl-Z (or hung) holds it until it goes on or ends, and the pull would
# otherwise show nothing but "Waiting" for as long.
CLAIM_NOTICE_S = 10.0


class Claim(Protocol):
    """A held cross-process claim on one layer (``pipeline._store.LayerClaim``)."""

    def release(self) -> None: ...


# Takes the claim on a digest, or returns None when someone else holds it; never waits.
ClaimTaker = Callable[[Digest], Claim | None]


@dataclass(frozen=True)
class DownloadTicket:
    """The right to download one layer, held until the ``download`` block exits.

    ``waited`` is True when another holder (in this process or another) had the digest
    first and this caller waited for it (the layer, if the store has it now, was shared
    rather than already there).
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

    The tasks of one trio run wait on a trio lock per digest; those of other runs (a host
    pulling into one Store from several threads, each running trio) and of other
    processes, on the store's claim: a trio lock belongs to one run, and one shared
    between two runs failed one pull and hung the other. The dictionary only holds the
    digests that some task is holding or waiting for, so it never grows with the number
    of layers ever pulled.
    """

    def __init__(self, claim: ClaimTaker | None = None, *, store: str = "") -> None:
        """``claim``: the store's cross-process claim (``Store.try_claim_layer``); None
        for a cache that excludes the tasks of this process only. ``store``: its path,
        for the warning of a long wait on another process."""
        # By trio run and digest: each run's entries are used by its thread only.
        self._entries: dict[tuple[trio.lowlevel.TrioToken, Digest], _Entry] = {}
        self._claim = claim
        self._store = store
        # Download slots by trio run, then by their number (max_concurrent_downloads).
        self._budgets: weakref.WeakKeyDictionary[
            trio.lowlevel.TrioToken, dict[int, trio.CapacityLimiter]
        ] = weakref.WeakKeyDictionary()

    def download_budget(self, tokens: int) -> trio.CapacityLimiter:
        """The download slots (``tokens`` layers at once) that every pull of this store
        asking for that many shares, unless it brings its own (``pull(downloads=)``).

        Shared as docker's daemon-wide ``max-concurrent-downloads`` is: eight pulls side
        by side then download as one pull of their layers would, where with 3 slots each
        they ran 24 layers against each other on the same cores (``fleet`` benchmark, 8
        pulls against one of their union: 1.21x its wall time with a budget each, 0.99x
        sharing one, benchmarks/RESULTS.md of 2026-11-29 13:40). Pulls asking for another
        number share a budget of that number.

        One budget per trio run (called from a task): a trio limiter belongs to one run,
        and a host may pull into one Store from several threads, each running its own;
        a limiter shared between two runs failed one pull and hung the other.
        """
        budgets = self._budgets.setdefault(trio.lowlevel.current_trio_token(), {})
        budget = budgets.get(tokens)
        if budget is None:
            budget = budgets[tokens] = trio.CapacityLimiter(tokens)
        return budget

    def busy(self, digest: Digest) -> bool:
        """Whether some task of this trio run holds (or waits for) ``digest`` right now."""
        return (trio.lowlevel.current_trio_token(), digest) in self._entries

    @contextlib.asynccontextmanager
    async def download(
        self, digest: Digest, *, on_wait: Callable[[], None] | None = None
    ) -> AsyncIterator[DownloadTicket]:
        """Hold the download slot of ``digest`` for the duration of the block.

        If another task holds it, wait (calling ``on_wait`` once first, e.g. to report
        "layer-shared") and take the slot when that holder leaves; then, likewise, the
        store's claim if another process holds that. Both are released however the block
        exits.
        """
        key = (trio.lowlevel.current_trio_token(), digest)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(trio.Lock())
        entry.users += 1
        try:
            waited = entry.lock.locked()
            if waited and on_wait is not None:
                on_wait()
            async with entry.lock:
                claim, waited_elsewhere = await self._claimed(digest, None if waited else on_wait)
                try:
                    yield DownloadTicket(digest, waited or waited_elsewhere)
                finally:
                    if claim is not None:
                        claim.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    async def _claimed(
        self, digest: Digest, on_wait: Callable[[], None] | None
    ) -> tuple[Claim | None, bool]:
        """The store's claim on ``digest`` (None without a claim taker), and whether
        another process held it first; polls until it is free."""
        if self._claim is None:
            return None, False
        waited = False
        notice_at = trio.current_time() + CLAIM_NOTICE_S
        while (claim := await trio.to_thread.run_sync(self._claim, digest)) is None:
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if trio.current_time() >= notice_at:
                notice_at = float("inf")  # said once
                log.warning(
                    f"layer {digest} is being downloaded into the store by another process;"
                    " waiting for it (if an imagec-pipe using this store is stopped, with"
                    " Ctrl-Z, resume or end it; pull --timeout bounds the wait)",
                    digest=str(digest),
                    store=self._store,
                )
            await trio.sleep(CLAIM_POLL_S)
        return claim, waited
