"""stages/_retry.py alone: the Retry-After header and the waits between attempts."""

from __future__ import annotations

import datetime

import pytest
import trio

from stages._config import Limits
from stages._errors import NotFound, RegistryUnavailable, TooManyRequests
from stages._retry import parse_retry_after, retry_wait, retrying

NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("30", 30.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("Fri, 27 Nov 2026 12:00:45 GMT", 45.0),  # an HTTP date: the time until it
        ("Fri, 27 Nov 2026 11:00:00 GMT", 0.0),  # in the past: no wait
        ("1234567890123", float("inf")),  # absurd: over any cap
        ("-5", None),
        ("soon", None),
        ("", None),
        ("٣", None),  # a digit, but not an ASCII one
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    limits = Limits(retries=10, retry_wait_s=0.5, retry_max_wait_s=3.0)
    error = RegistryUnavailable("HTTP 503", transient=True)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        waits = [retry_wait(error, retry, limits) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits), (retry, waits)
        assert max(waits) - min(waits) > ceiling / 10  # jittered, not one value


def test_the_backoff_stays_at_its_cap_however_many_retries_are_allowed() -> None:
    """``--retries 5000`` against a registry that keeps failing: past retry 1024 the
    doubling ``2.0 ** (retry - 1)`` would be an OverflowError, an untyped crash hours into
    a pull, instead of a wait at the cap."""
    limits = Limits(retries=5000, retry_wait_s=0.5, retry_max_wait_s=3.0)
    error = RegistryUnavailable("HTTP 503", transient=True)
    for retry in (1024, 1025, 4999, 5000):
        assert 1.5 <= retry_wait(error, retry, limits) <= 3.0


def test_retry_after_is_waited_as_asked() -> None:
    error = TooManyRequests("HTTP 429", transient=True, retry_after_s=7.0)
    assert retry_wait(error, 1, Limits()) == 7.0


def test_no_wait_for_what_is_not_transient_or_past_the_retries() -> None:
    with pytest.raises(NotFound):
        retry_wait(NotFound("no such tag"), 1, Limits())
    error = RegistryUnavailable("HTTP 503", transient=True)
    with pytest.raises(RegistryUnavailable, match="gave up after 3 attempts"):
        retry_wait(error, 3, Limits(retries=2))


def test_with_retries_off_the_error_is_as_it_was() -> None:
    error = RegistryUnavailable("HTTP 503", transient=True)
    with pytest.raises(RegistryUnavailable) as info:
        retry_wait(error, 1, Limits(retries=0))
    assert str(info.value) == "HTTP 503"


async def test_retrying_calls_again_and_reports_each_retry() -> None:
    calls: list[int] = []
    reported: list[tuple[int, float]] = []

    async def attempt() -> str:
        calls.append(len(calls))
        await trio.lowlevel.checkpoint()
        if len(calls) < 3:
            raise RegistryUnavailable("reset", transient=True)
        return "done"

    with trio.fail_after(5):
        result = await retrying(
            attempt,
            Limits(retries=4, retry_wait_s=0.001),
            on_retry=lambda error, retry, wait: reported.append((retry, wait)),
        )
    assert result == "done" and len(calls) == 3
    assert [retry for retry, _ in reported] == [1, 2]


def test_a_stall_is_retried_up_to_the_stall_retries_in_a_row_then_raised_saying_so() -> None:
    """Each stall costs the whole read timeout: ``retries`` of them held a pull minutes on
    a server that had hung. A stall that received nothing is retried ``stall_retries``
    times in a row."""
    limits = Limits(retries=4, stall_retries=1)
    error = RegistryUnavailable("no data from reg for 60 s", transient=True, stalled_s=60.0)
    assert retry_wait(error, 1, limits, stalls=1) <= limits.retry_wait_s
    assert retry_wait(error, 3, limits, stalls=1) <= 4 * limits.retry_wait_s
    with pytest.raises(RegistryUnavailable) as info:
        retry_wait(error, 2, limits, stalls=2)
    assert str(info.value) == "no data from reg for 60 s; 2 times in a row, so not tried again"
    with pytest.raises(RegistryUnavailable, match=r"60 s; not tried again$"):
        retry_wait(
            RegistryUnavailable("no data from reg for 60 s", transient=True, stalled_s=60.0),
            1,
            Limits(stall_retries=0),
            stalls=1,
        )
