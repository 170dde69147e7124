"""Supervised loops, and stopping tasks that swallow a cancellation (as redis-py can while it
connects)."""

from __future__ import annotations

import asyncio

from affinity_queue.aio import cancel_and_wait, supervise


async def test_a_task_that_swallows_one_cancellation_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait([task], deadline_s=2)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_stops_is_left_behind_at_the_deadline() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cancel_and_wait([task], deadline_s=0.3)
    assert 0.3 <= loop.time() - started < 2 and not task.done()
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)


async def test_a_loop_that_fails_or_ends_is_restarted_and_logged_once(caplog) -> None:
    calls = 0
    release = asyncio.Event()

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ValueError(f"bug #{calls}")
        if calls == 4:
            return  # ended while it should run
        await release.wait()

    task_ = supervise(
        body, name="aq-test", what="the test loop", running=lambda: not release.is_set()
    )
    deadline = asyncio.get_running_loop().time() + 10
    while calls < 5:
        assert asyncio.get_running_loop().time() < deadline, calls
        await asyncio.sleep(0.02)
    release.set()
    await asyncio.wait_for(task_, 5)
    failed = [r for r in caplog.records if "the test loop failed" in r.getMessage()]
    ended = [r for r in caplog.records if "the test loop ended" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None, failed
    assert len(ended) == 1, ended
