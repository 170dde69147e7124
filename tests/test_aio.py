"""Stopping tasks that swallow a cancellation (as redis-py can while it connects)."""

from __future__ import annotations

import asyncio

from affinity_queue.aio import cancel_and_wait


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
