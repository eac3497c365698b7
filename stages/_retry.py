"""Bounded retries: whether a failed request is tried again, and how long to wait first.

RELIABILITY.md asks that 5xx bursts, 429s, a connection reset mid-blob and an expired
signed URL do not fail a pull that one more attempt would finish, and that every failure
still ends within a bounded time. The sites that meet a failure only say what it is
(``transient`` and ``retry_after_s`` on the error, see stages/_errors.py); this module
alone decides what follows:

- an error not marked transient is raised at once;
- a stall (the server sent nothing for the read timeout, or did not answer within the
  response deadline: ``stalled_s`` on the error) is tried again at most
  ``limits.stall_retries`` times in a row while the request makes no real progress (a
  layer: fewer than ``limits.stall_progress_bytes`` delivered by the network per
  attempt, kept or skipped, or no new byte kept; any other request: any stall), then
  raised, saying how many times it happened: each costs the whole read timeout (or
  deadline), and five of them held a pull five minutes on a server that had hung, that
  sent one byte per attempt, or that resent a blob from its start and stalled where it
  had stalled before;
- after ``limits.retries`` retries, the last error is raised, saying how many attempts
  were made;
- a ``Retry-After`` longer than ``limits.retry_after_max_s`` is raised at once, saying
  how long the server (``retry_after_from``) asked for: waiting an hour inside a pull is
  a hang;
- otherwise the wait is the server's ``Retry-After`` (a registry's, a token service's, or
  a proxy's to a CONNECT: ``ProxyRefused.retry_after_s``), or else exponential backoff with
  jitter: ``retry_wait_s * 2**(n-1)``, at most ``retry_max_wait_s``, of which a random
  half, so that pulls that failed together do not come back together.

The worst case is bounded: ``retries`` waits of at most ``max(retry_max_wait_s,
retry_after_max_s)``, each attempt bounded by the client's timeouts and deadlines.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ._config import Limits
from ._errors import ImagecError
from ._log import get_logger

__all__ = ["parse_retry_after", "retry_wait", "retrying"]

log = get_logger()

T = TypeVar("T")

# The exponent of the backoff's doubling stops here (the largest a float holds), so that
# ``--retries`` of thousands never overflows.
_MAX_DOUBLINGS = 1023
# A Retry-After of more digits than this is "too long" without converting it.
_MAX_RETRY_AFTER_DIGITS = 9


def parse_retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait: delay-seconds or an HTTP date
    (RFC 9110 10.2.3); a date in the past is 0. None when absent or unreadable: the
    caller then backs off on its own."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float("inf") if len(text) > _MAX_RETRY_AFTER_DIGITS else float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is taken so
        when = when.replace(tzinfo=datetime.UTC)
    now = now if now is not None else datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def retry_wait(error: ImagecError, retry: int, limits: Limits, *, stalls: int = 0) -> float:
    """Seconds to wait before retry number ``retry`` (from 1) after ``error``, the last of
    ``stalls`` stalls in a row that made no real progress (0: ``error`` is no such stall).

    Raises ``error`` when there is to be no retry: it is not transient, ``stalls`` is
    over ``limits.stall_retries`` (its message then says how many), the retries are used
    up (its message then says how many attempts were made), or its Retry-After is over
    ``limits.retry_after_max_s`` (its message then says so).
    """
    if not error.transient:
        raise error
    if stalls > limits.stall_retries and limits.retries:
        error.extend_message(
            f"{stalls} times in a row, so not tried again" if stalls > 1 else "not tried again",
        )
        raise error
    if retry > limits.retries:
        if limits.retries:
            error.extend_message(f"gave up after {retry} attempts")
        raise error
    asked = error.retry_after_s
    if asked is not None:
        if asked > limits.retry_after_max_s:
            wait = "an unbounded time" if asked == float("inf") else f"{asked:.0f} s"
            who = error.retry_after_from or "the server"
            error.extend_message(
                f"{who} asks to wait {wait}, over the {limits.retry_after_max_s:g} s "
                "a pull waits: try again later",
            )
            raise error
        return asked
    # 2.0 ** 1024 is an OverflowError; the product may overflow to inf, which min() caps.
    doubling = 2.0 ** min(retry - 1, _MAX_DOUBLINGS)
    ceiling = min(limits.retry_max_wait_s, limits.retry_wait_s * doubling)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter, not secrecy


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    limits: Limits,
    *,
    on_retry: Callable[[ImagecError, int, float], None] | None = None,
    position: Callable[[], int] | None = None,
    kept: Callable[[], int] | None = None,
) -> T:
    """``await attempt()`` until it returns, retrying as ``retry_wait`` allows.

    ``on_retry(error, retry, wait_s)`` is called before each wait (progress events);
    every retry is also logged as a warning, so a pull that succeeded slowly says why.
    ``position()`` says how far the work has got (a blob's bytes delivered by the
    network, those of a resent start that were skipped included: the server was
    sending): an attempt that moved it by ``limits.stall_progress_bytes`` or more and
    then stalled made progress, so it starts the count of stalls in a row again; one that
    moved it less (a byte, then silence) is one more stall. Without it, every stall
    counts. ``kept()`` says how much of the work is kept (a blob's bytes passed on): an
    attempt that kept nothing new made no progress, however much arrived. A server that
    ignores Range resends the blob from its start; one that then stalls a little further
    each time is sending what was asked for, one that stalls where it stalled before
    never will, and counted by ``position`` alone it held the layer for every retry.
    """
    retry = 0
    stalls = 0  # attempts in a row that ended in a stall having made no real progress
    while True:
        before = position() if position is not None else 0
        kept_before = kept() if kept is not None else 0
        try:
            return await attempt()
        except ImagecError as error:
            retry += 1
            moved = (
                position is not None
                and position() - before >= limits.stall_progress_bytes
                and (kept is None or kept() > kept_before)
            )
            stalls = stalls + 1 if error.stalled_s is not None and not moved else 0
            wait = retry_wait(error, retry, limits, stalls=stalls)
            log.warning(
                "retrying",
                ref=error.ref,
                digest=error.digest,
                error=error.message,
                retry=retry,
                of=limits.retries,
                wait_s=round(wait, 2),
            )
            if on_retry is not None:
                on_retry(error, retry, wait)
            await trio.sleep(wait)
