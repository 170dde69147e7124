"""Retention: finished job records are kept up to KEEP_COMPLETED / KEEP_FAILED and for
COMPLETED_TTL / FAILED_TTL, so Redis memory stays bounded in a long run."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from affinity_queue import AffinityQueue, JobStatus, QueueService, QueueSettings

from ..support import queue_keys, wait_for
from .support import all_settled, task

N_TASKS = 100_000
N_TAGS = 1_000
KEEP = 100


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def job_keys(redis: Redis, settings: QueueSettings) -> set[str]:
    prefix = settings.keys.job_prefix
    return {k for k in await queue_keys(redis, settings) if k.startswith(prefix)}


async def finished_count(queue: QueueService, total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await queue.get_queue_stats()
        if stats.completed + stats.failed >= total:
            return
        assert time.monotonic() < deadline, f"{total} jobs not finished in {timeout_s} s: {stats}"
        await asyncio.sleep(0.2)


async def test_only_the_newest_completed_records_are_kept(make_settings, redis_client) -> None:
    settings = make_settings(worker_count=1, keep_completed=10)
    aq = AffinityQueue(settings)

    @aq.handler("t")
    async def handle(payload: int) -> int:
        await asyncio.sleep(0.002)  # distinct finish times (ms)
        return payload

    q = aq.queue()
    jobs = await q.add_bulk(task("T", i) for i in range(30))
    async with aq:
        await finished_count(q, 30, timeout_s=20)
        kept = [await q.get_job(j.id) for j in jobs]
    # One tag on one worker: they finish in add order, so the last ten are the newest.
    assert [j is not None for j in kept] == [False] * 20 + [True] * 10
    assert all(j.status is JobStatus.COMPLETED and j.result == j.payload for j in kept[20:])  # type: ignore[union-attr]
    assert len(await job_keys(redis_client, settings)) == 10


async def test_a_run_finishing_more_than_keep_records_keeps_only_keep(
    make_settings, redis_client
) -> None:
    """A batch of 20 ends in one call, all in the same millisecond: 5 records stay, not 20 (the
    call's own records past KEEP_COMPLETED were once left to their TTL), and they are the last
    5 of the batch, whatever their ids sort like."""
    settings = make_settings(worker_count=1, keep_completed=5, max_batch_size=20)
    aq = AffinityQueue(settings)

    @aq.batch_handler("b", max_size=20)
    async def handle(payloads: list[int]) -> list[int]:
        return payloads

    q = aq.queue()
    async with aq:
        # Past the warm-up the order counter is in the 90s: the batch's ids cross from "9x-..."
        # to "10x-...", which sort first as text.
        await q.add_bulk({"type": "b", "identifyTag": "warm", "payload": i} for i in range(85))
        await finished_count(q, 85, timeout_s=20)
        jobs = await q.add_bulk({"type": "b", "identifyTag": "T", "payload": i} for i in range(20))
        assert jobs[0].id.startswith("9") and jobs[-1].id.startswith("1"), jobs
        await finished_count(q, 105, timeout_s=20)
        kept = [await q.get_job(j.id) for j in jobs]
    assert len(await job_keys(redis_client, settings)) == 5
    assert [j is not None for j in kept] == [False] * 15 + [True] * 5, "not the newest 5 kept"


async def test_only_the_newest_dead_letters_are_kept(make_settings, redis_client) -> None:
    settings = make_settings(worker_count=1, keep_failed=3)
    aq = AffinityQueue(settings)

    @aq.handler("t")
    async def handle(payload: int) -> None:
        await asyncio.sleep(0.002)
        raise RuntimeError(f"no {payload}")

    q = aq.queue()
    jobs = await q.add_bulk(task("T", i) for i in range(8))
    async with aq:
        await finished_count(q, 8, timeout_s=20)
        letters = await q.list_failed()
        kept = [await q.get_job(j.id) for j in jobs]
    assert [j.id for j in letters] == [j.id for j in reversed(jobs[-3:])]
    assert [j is not None for j in kept] == [False] * 5 + [True] * 3


async def test_records_expire_after_their_ttl(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, completed_ttl_ms=300, failed_ttl_ms=300))

    @aq.handler("t")
    async def handle(payload: bool) -> str:
        if not payload:
            raise RuntimeError("no")
        return "big result " * 100

    q = aq.queue()
    ok, bad = await q.add_bulk([task("T", True), task("T", False)])
    async with aq:
        done = await all_settled(q, [ok.id, bad.id])
        assert [j.status for j in done] == [JobStatus.COMPLETED, JobStatus.FAILED]
        assert [j.id for j in await q.list_failed()] == [bad.id]
        for job in (ok, bad):
            await wait_for(
                lambda j=job: q.get_job(j.id), lambda got: got is None, timeout_s=5, what="expiry"
            )
        # The dead-letter index may still name the expired record: the list must skip it.
        assert await q.list_failed() == []


async def test_redis_memory_returns_near_its_start_after_100k_tasks(
    make_settings, redis_client
) -> None:
    settings = make_settings(
        worker_count=20, max_batch_size=50, keep_completed=KEEP, keep_failed=KEEP
    )
    aq = AffinityQueue(settings)

    @aq.handler("t")
    async def handle(payload: int) -> dict[str, int]:
        if payload % 100 == 0:
            raise ValueError(f"planned failure {payload}")
        return {"n": payload}

    q = aq.queue()
    async with aq:
        # Warm-up on the same paths, so scripts, connections, workers and the per-queue
        # structures exist before the baseline.
        warm = 2_000
        await q.add_bulk(task(f"tag-{i % N_TAGS}", i) for i in range(warm))
        await finished_count(q, warm, timeout_s=30)
        baseline = await used_memory(redis_client)
        keys_before = len(await job_keys(redis_client, settings))

        t0 = time.monotonic()
        # Paused while it is added, so the whole backlog is there to measure (the workers
        # would otherwise drain it about as fast as it comes).
        await q.pause()
        jobs = await q.add_bulk(task(f"tag-{i % N_TAGS}", i) for i in range(1, N_TASKS + 1))
        peak = await used_memory(redis_client)
        await q.resume()
        await finished_count(q, warm + N_TASKS, timeout_s=120)
        elapsed = time.monotonic() - t0
        after = await used_memory(redis_client)
        keys_after = len(await job_keys(redis_client, settings))
        oldest = await q.get_job(jobs[0].id)
        stats = await q.get_queue_stats()
    print(
        f"100k tasks in {elapsed:.1f} s; used_memory baseline {baseline:,} B, with the backlog "
        f"{peak:,} B, after {after:,} B; job records {keys_before} -> {keys_after}"
    )
    assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0), stats
    assert stats.failed >= N_TASKS // 100
    # The newest KEEP completed and KEEP failed records, no more and no fewer.
    assert keys_after == 2 * KEEP, f"{keys_after} job records kept (KEEP_*={KEEP})"
    assert oldest is None, "the oldest job's record outlived retention"
    # What 100k records would cost, for scale: the backlog alone grew memory by this much.
    growth = peak - baseline
    assert growth > 10 * 2**20, f"the backlog cost only {growth:,} B: the measure is blind"
    margin = max(2 * 2**20, baseline // 20)
    assert after <= baseline + margin, (
        f"used_memory {after:,} B after the run vs {baseline:,} B before "
        f"(+{after - baseline:,} B; allowed +{margin:,} B)"
    )
