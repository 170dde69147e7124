"""Graceful stop: queued jobs go back at once, the running one finishes, the tag never overlaps."""

from __future__ import annotations

import asyncio
import itertools
import time

from affinity_queue import AffinityQueue, JobStatus


async def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_stop_hands_back_queued_jobs_at_once_and_keeps_the_tag_exclusive(make_settings):
    settings = make_settings(worker_count=1, max_batch_size=10, shutdown_grace_period_ms=10_000)
    first, second = AffinityQueue(settings), AffinityQueue(settings)
    release_first = asyncio.Event()
    first_started = asyncio.Event()
    runs: list[tuple[str, int, float, float]] = []

    async def handler(payload, ctx):
        start = time.monotonic()
        if payload["seq"] == 0:
            first_started.set()
            await release_first.wait()
        runs.append((ctx.worker_id, payload["seq"], start, time.monotonic()))

    for aq in (first, second):
        aq.worker().register_handler("t", handler)

    await first.start()
    try:
        jobs = await first.queue().add_bulk(
            [{"type": "t", "identifyTag": "A", "payload": {"seq": i}} for i in range(5)]
        )
        await asyncio.wait_for(first_started.wait(), 10)
        await second.start()
        stopping = asyncio.create_task(first.aclose())

        async def queued_are_pending() -> bool:
            states = [await second.queue().get_job(j.id) for j in jobs[1:]]
            return all(s is not None and s.status is JobStatus.PENDING for s in states)

        # The queued jobs are back in their tag while job 0 still runs ...
        await _wait_for(queued_are_pending)
        assert not stopping.done()
        # ... and nobody starts the tag while it does.
        await asyncio.sleep(0.3)
        assert runs == []
        release_first.set()
        await asyncio.wait_for(stopping, 10)

        async def all_done() -> bool:
            return (await second.queue().get_queue_stats()).completed == 5

        await _wait_for(all_done)
    finally:
        release_first.set()
        await first.aclose()
        await second.aclose()

    assert [seq for _, seq, _, _ in runs] == [0, 1, 2, 3, 4]
    for (_, _, _, end), (_, _, start, _) in itertools.pairwise(runs):
        assert end <= start, "two jobs of tag A overlapped"
    stats_workers = {w for w, *_ in runs}
    assert len(stats_workers) == 2, "the rest of the tag ran on the other process"
