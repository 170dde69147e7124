"""A tag is exclusive in real time: nothing else of it starts, on this worker or elsewhere, until
a handler's code has really returned, even past its timeout or the shutdown grace period, and
even when it cannot be interrupted (a sync handler) or will not be (an async one that swallows
its cancellation)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from affinity_queue import AffinityQueue, JobContext, JobStatus

from .lifecycle.support import all_settled, task
from .support import Run, overlaps, wait_for


def _recorder(runs: list[Run], hold_s: float, *, is_async: bool) -> Any:
    """A handler that runs ``hold_s`` for payload "hold" (a sync one uninterruptibly, an async
    one swallowing every cancellation) and at once otherwise, recording each run's real span."""
    if is_async:

        async def async_handler(payload: str, ctx: JobContext) -> str:
            start = time.monotonic()
            if payload == "hold":
                while time.monotonic() < start + hold_s:
                    try:
                        await asyncio.sleep(start + hold_s - time.monotonic())
                    except asyncio.CancelledError:
                        asyncio.current_task().uncancel()  # type: ignore[union-attr]
            runs.append(
                Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, time.monotonic())
            )
            return payload

        return async_handler

    def sync_handler(payload: str, ctx: JobContext) -> str:
        start = time.monotonic()
        if payload == "hold":
            time.sleep(hold_s)
        runs.append(
            Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, time.monotonic())
        )
        return payload

    return sync_handler


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_handler_past_its_timeout_holds_its_tag_until_it_returns(
    make_settings, kind
) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    runs: list[Run] = []
    aq.worker().register_handler("t", _recorder(runs, 1.0, is_async=kind == "async"), timeout_s=0.2)
    q = aq.queue()
    jobs = [await q.add(task("A", p)) for p in ["hold", "next", "next"]]
    async with aq:
        held, *rest = await all_settled(q, [j.id for j in jobs], timeout_s=10)
    await wait_for(lambda: _len(runs), lambda n: n >= 3, what="every run to end")
    assert held.status is JobStatus.FAILED, held
    assert held.error is not None and held.error.type == "TimeoutError", held.error
    assert held.result is None, "the late result must be ignored"
    assert all(j.status is JobStatus.COMPLETED for j in rest), rest
    assert overlaps(runs) == 1, f"two runs of tag A overlapped in real time: {runs}"


async def test_a_cooperative_sync_handler_sees_cancelled_at_its_timeout(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    saw: list[float] = []

    @aq.handler("t", timeout_s=0.2)
    def handle(payload: None, ctx: JobContext) -> None:
        start = time.monotonic()
        while not ctx.cancelled and time.monotonic() < start + 10:
            time.sleep(0.01)
        saw.append(time.monotonic() - start)

    q = aq.queue()
    job = await q.add(task("A"))
    async with aq:
        (done,) = await all_settled(q, [job.id], timeout_s=10)
    assert done.error is not None and done.error.type == "TimeoutError"
    assert saw and 0.15 < saw[0] < 2.0, saw


@pytest.mark.parametrize(
    ("kind", "hold_s", "lease_ms"),
    [
        ("sync", 1.5, 2000),
        # Past cancel_and_wait's 5 s: the old code gave up on the slot and handed the job back.
        ("async", 6.0, 8000),
    ],
)
async def test_a_handler_running_past_the_grace_period_keeps_its_tag(
    make_settings, kind, hold_s, lease_ms
) -> None:
    settings = make_settings(
        worker_count=1,
        shutdown_grace_period_ms=300,
        heartbeat_timeout_ms=lease_ms,
        max_attempts=3,
    )
    first, second = AffinityQueue(settings), AffinityQueue(settings)
    runs: list[Run] = []
    for aq in (first, second):
        aq.worker().register_handler("t", _recorder(runs, hold_s, is_async=kind == "async"))
    await first.start()
    try:
        jobs = [await first.queue().add(task("A", p)) for p in ["hold", "next", "next"]]
        await wait_for(
            lambda: first.queue().get_job(jobs[0].id),
            lambda j: j is not None and j.status is JobStatus.ACTIVE,
            what="the first job running",
        )
        await second.start()
        await asyncio.wait_for(first.aclose(), 10)
        # The held job runs again on the second process once the first's lease lapsed.
        await all_settled(
            second.queue(), [j.id for j in jobs], timeout_s=hold_s + lease_ms / 1000 + 15
        )
        await wait_for(lambda: _len(runs), lambda n: n >= 4, timeout_s=hold_s + 5, what="4 runs")
    finally:
        await first.aclose()
        await second.aclose()
    assert overlaps(runs) == 1, (
        f"two runs of tag A overlapped in real time: {sorted(runs, key=lambda r: r.start)}"
    )


async def _len(runs: list[Run]) -> int:
    return len(runs)
