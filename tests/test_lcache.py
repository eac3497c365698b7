"""LCache: one holder per digest, waiters take over on any exit, nothing leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from pipeline._lcache import LCache
from stages._types import Digest

A = Digest.from_hex("a" * 64)
B = Digest.from_hex("b" * 64)


async def test_one_holder_others_wait() -> None:
    cache = LCache()
    log: list[str] = []
    release = trio.Event()

    async def holder() -> None:
        async with cache.download(A) as ticket:
            assert not ticket.waited
            log.append("holder in")
            await release.wait()
            log.append("holder out")

    async def waiter() -> None:
        async with cache.download(A) as ticket:
            assert ticket.waited
            assert ticket.digest == A
            log.append("waiter in")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["holder in"]
            assert cache.busy(A)
            release.set()
    assert log == ["holder in", "holder out", "waiter in"]
    assert not cache.busy(A)
    assert cache._entries == {}


def test_a_download_budget_is_one_per_number_of_slots_and_trio_run() -> None:
    """Pulls of one store asking for the same number of download slots share them; a
    number asked for once more gets the same limiter, another number its own. Another
    trio run (another thread of a host, or a later run) gets its own: a trio limiter
    belongs to one run."""
    cache = LCache()

    async def budgets() -> tuple[trio.CapacityLimiter, trio.CapacityLimiter]:
        three = cache.download_budget(3)
        assert cache.download_budget(3) is three
        one = cache.download_budget(1)
        assert LCache().download_budget(3) is not three  # another store's
        return three, one

    three, one = trio.run(budgets)
    assert (three.total_tokens, one.total_tokens) == (3, 1)
    later, _ = trio.run(budgets)
    assert later is not three


async def test_other_digests_do_not_wait() -> None:
    cache = LCache()
    with trio.fail_after(10):
        async with cache.download(A) as a, cache.download(B) as b:
            assert not a.waited
            assert not b.waited
    assert cache._entries == {}


async def test_waiter_takes_over_after_failure() -> None:
    cache = LCache()
    took_over = []
    fail = trio.Event()

    async def failing_holder() -> None:
        async with cache.download(A):
            await fail.wait()
            raise RuntimeError("download failed")

    async def waiter() -> None:
        async with cache.download(A) as ticket:
            took_over.append(ticket.waited)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def run_holder() -> None:
                with pytest.raises(RuntimeError):
                    await failing_holder()

            nursery.start_soon(run_holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert took_over == []
            fail.set()
    assert took_over == [True]
    assert cache._entries == {}


async def test_cancelled_holder_releases() -> None:
    cache = LCache()
    took_over = trio.Event()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            holder_scope = trio.CancelScope()

            async def holder() -> None:
                with holder_scope:
                    async with cache.download(A):
                        await trio.sleep_forever()

            async def waiter() -> None:
                async with cache.download(A) as ticket:
                    assert ticket.waited
                    took_over.set()

            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not took_over.is_set()
            holder_scope.cancel()
    assert took_over.is_set()
    assert cache._entries == {}


async def test_cancelled_waiter_leaves_holder_alone() -> None:
    cache = LCache()
    release = trio.Event()
    finished = []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def holder() -> None:
                async with cache.download(A):
                    await release.wait()
                    finished.append("holder")

            waiter_scope = trio.CancelScope()

            async def waiter() -> None:
                with waiter_scope:
                    async with cache.download(A):
                        finished.append("waiter")  # pragma: no cover - cancelled first

            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            waiter_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert cache.busy(A)
            release.set()
    assert finished == ["holder"]
    assert cache._entries == {}


async def test_waiters_served_in_order_and_on_wait_called() -> None:
    cache = LCache()
    order: list[int] = []
    waits: list[int] = []
    release = trio.Event()

    async def user(i: int) -> None:
        async with cache.download(A, on_wait=lambda: waits.append(i)) as ticket:
            assert ticket.waited == (i != 0)
            if i == 0:
                await release.wait()
            order.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(user, i)
                await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert order == [0, 1, 2, 3]
    assert waits == [1, 2, 3]
    assert cache._entries == {}


# --- across processes: the store's claim --------------------------------------------------


async def test_two_caches_on_one_store_take_turns_through_its_claim(tmp_path: Path) -> None:
    """Two Store objects (as two processes would) on one store: the second waits for the
    first's claim, sees that it waited, and gets the claim once the first lets go."""
    from pipeline._store import Store

    first, second = Store.open(tmp_path / "s"), Store.open(tmp_path / "s")
    log: list[str] = []
    holding, release = trio.Event(), trio.Event()

    async def holder() -> None:
        async with first.lcache.download(A) as ticket:
            assert not ticket.waited
            log.append("first in")
            holding.set()
            await release.wait()
            log.append("first out")

    async def waiter() -> None:
        async with second.lcache.download(A) as ticket:
            assert ticket.waited
            log.append("second in")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await holding.wait()  # the claim is taken in a thread: wait for it
            nursery.start_soon(waiter)
            await trio.sleep(0.3)  # several polls
            assert log == ["first in"]
            release.set()
    assert log == ["first in", "first out", "second in"]
    assert not (tmp_path / "s" / "ingest" / f"{A.hex}.claim").exists()


async def test_a_cancelled_claim_waiter_leaves_nothing_held(tmp_path: Path) -> None:
    from pipeline._store import Store

    first, second = Store.open(tmp_path / "s"), Store.open(tmp_path / "s")
    with trio.fail_after(10):
        async with first.lcache.download(A):
            with trio.move_on_after(0.2) as waited:
                async with second.lcache.download(A):
                    pytest.fail("the claim is held by the first store")
            assert waited.cancelled_caught
            assert not second.lcache.busy(A)
        async with second.lcache.download(A) as ticket:  # free now, and at once
            assert not ticket.waited


async def test_a_long_wait_on_another_process_s_claim_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull waiting behind a process stopped with Ctrl-Z showed "Waiting" and nothing
    # else for as long as it stayed stopped. (CLAIM_NOTICE_S made short for the test.)
    from structlog.testing import capture_logs

    from pipeline import _lcache
    from pipeline._store import Store

    monkeypatch.setattr(_lcache, "CLAIM_NOTICE_S", 0.5)
    first, second = Store.open(tmp_path / "s"), Store.open(tmp_path / "s")
    with trio.fail_after(20), capture_logs() as logs:
        async with first.lcache.download(A):
            with trio.move_on_after(0.2):
                async with second.lcache.download(A):
                    pytest.fail("the claim is held by the first store")
            assert logs == []  # a short wait is nothing to warn of
            with trio.move_on_after(1.5):
                async with second.lcache.download(A):
                    pytest.fail("the claim is held by the first store")
    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert warning["event"].startswith(f"layer {A} is being downloaded into the store by another")
    assert "stopped, with Ctrl-Z, resume or end it" in warning["event"]
    assert warning["store"] == str(tmp_path / "s")
