"""Deduplication: within its window a dedupe key returns the job it first admitted and writes
nothing; after the window the same key admits a new job."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus

from ..support import queue_keys, snapshot
from .support import settled, task


async def test_a_key_within_its_window_returns_the_existing_job(
    make_settings, redis_client
) -> None:
    settings = make_settings(worker_count=1)
    aq = AffinityQueue(settings)
    ran: list[Any] = []

    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> Any:
        ran.append(payload)
        return payload

    q = aq.queue()
    first = await q.add(task("T", "first"), dedupe_key="order-1", dedupe_ttl_s=30)
    before = await snapshot(redis_client, settings)
    again = await q.add(task("T", "second"), dedupe_key="order-1", dedupe_ttl_s=30)
    assert again.id == first.id
    assert again.payload == "first", "the existing job is returned, not the new task"
    assert await snapshot(redis_client, settings) == before, "a deduplicated add wrote something"
    other = await q.add(task("T", "other"), dedupe_key="order-2", dedupe_ttl_s=30)
    assert other.id != first.id
    async with aq:
        await settled(q, first.id)
        await settled(q, other.id)
        # Finished, but still within the window: still the same job, not run again.
        late = await q.add(task("T", "third"), dedupe_key="order-1", dedupe_ttl_s=30)
        assert late.id == first.id and late.status is JobStatus.COMPLETED, late
        stats = await q.get_queue_stats()
    assert ran == ["first", "other"]
    assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0)


async def test_a_key_admits_a_new_job_after_its_window(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    q = aq.queue()
    try:
        t0 = time.monotonic()
        first = await q.add(task("T", 1), dedupe_key="k", dedupe_ttl_s=0.5)
        same = await q.add(task("T", 2), dedupe_key="k", dedupe_ttl_s=0.5)
        assert same.id == first.id or time.monotonic() - t0 >= 0.5
        deadline = time.monotonic() + 5
        while True:
            fresh = await q.add(task("T", 3), dedupe_key="k", dedupe_ttl_s=0.5)
            if fresh.id != first.id:
                break
            assert time.monotonic() < deadline, "the key still deduplicates 5 s after a 0.5 s TTL"
            await asyncio.sleep(0.02)
        waited = time.monotonic() - t0
        assert waited >= 0.5 - 0.01, f"the window closed after {waited:.3f} s, not 0.5 s"
        assert fresh.payload == 3 and fresh.status is JobStatus.PENDING
        again = await q.add(task("T", 4), dedupe_key="k", dedupe_ttl_s=0.5)
        assert again.id == fresh.id, "the new job opens a new window"
        assert (await q.get_queue_stats()).pending == 2
    finally:
        await aq.aclose()


async def test_concurrent_adds_with_one_key_make_one_job(make_settings, redis_client) -> None:
    """A producer retrying its own call (or several racing) still gets one job."""
    settings = make_settings()
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        jobs = await asyncio.gather(
            *(q.add(task("T", i), dedupe_key="same", dedupe_ttl_s=30) for i in range(20))
        )
        assert len({j.id for j in jobs}) == 1, sorted({j.id for j in jobs})
        assert (await q.get_queue_stats()).pending == 1
        job_keys = [
            k
            for k in await queue_keys(redis_client, settings)
            if k.startswith(settings.keys.job_prefix)
        ]
        assert job_keys == [settings.keys.job(jobs[0].id)]
    finally:
        await aq.aclose()


async def test_a_key_that_outlives_its_jobs_record_returns_no_phantom(make_settings) -> None:
    """Retention removed the job the key admitted while the key's window still runs: ``add``
    must not answer with a pending job that does not exist (it would never run, and
    ``get_job`` / ``wait_for`` on its id find nothing)."""
    aq = AffinityQueue(make_settings(worker_count=1, completed_ttl_ms=200))

    @aq.handler("t")
    async def handle(payload: int) -> int:
        return payload

    q = aq.queue()
    async with aq:
        first = await q.add(task("T", 1), dedupe_key="k", dedupe_ttl_s=60)
        await settled(q, first.id)
        deadline = time.monotonic() + 5
        while await q.get_job(first.id) is not None:
            assert time.monotonic() < deadline, "the record did not expire"
            await asyncio.sleep(0.05)
        again = await q.add(task("T", 2), dedupe_key="k", dedupe_ttl_s=60)
        stored = await q.get_job(again.id)
    assert stored is not None, (
        f"add returned job {again.id} ({again.status}, payload {again.payload!r}) "
        "but no such job exists"
    )
    assert (stored.payload, stored.identify_tag) == (again.payload, again.identify_tag)
