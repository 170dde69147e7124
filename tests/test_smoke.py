from __future__ import annotations

import asyncio

import pytest

from affinity_queue import AffinityQueue, JobStatus


async def test_task_runs_end_to_end(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    done = asyncio.Event()
    seen = []

    @aq.handler("echo")
    async def echo(payload, ctx):
        seen.append((payload, ctx.identify_tag, ctx.attempt))
        done.set()
        return {"echo": payload}

    async with aq:
        job = await aq.queue().add({"type": "echo", "identifyTag": "t1", "payload": {"x": 1}})
        await asyncio.wait_for(done.wait(), 5)
        for _ in range(100):
            got = await aq.queue().get_job(job.id)
            if got and got.status is JobStatus.COMPLETED:
                break
            await asyncio.sleep(0.02)
        assert got is not None and got.status is JobStatus.COMPLETED
        assert got.result == {"echo": {"x": 1}}
        stats = await aq.queue().get_queue_stats()
        assert stats.completed == 1 and stats.pending == 0
        assert stats.leader is not None
    assert seen == [({"x": 1}, "t1", 1)]


async def test_services_refuse_work_after_aclose(make_settings) -> None:
    from affinity_queue import LifecycleError

    aq = AffinityQueue(make_settings())
    async with aq:
        await aq.queue().add({"type": "t", "identifyTag": "a"})
    with pytest.raises(LifecycleError, match="closed"):
        await aq.queue().add({"type": "t", "identifyTag": "a"})
    with pytest.raises(LifecycleError):
        await aq.queue().get_queue_stats()


def test_two_queues_cannot_share_a_pending_queue_name(make_settings) -> None:
    with pytest.raises(ValueError, match="PENDING_QUEUE_NAME"):
        AffinityQueue(make_settings(), queues={"other": make_settings()})


def test_a_password_with_url_characters_is_escaped(make_settings) -> None:
    url = make_settings(redis_url=None, redis_password="p@ss:w/rd").resolved_redis_url
    assert url.startswith("redis://:p%40ss%3Aw%2Frd@")


async def test_add_bulk_returns_each_job_as_redis_holds_it(make_settings) -> None:
    """The returned jobs are copies of one chunk-wide template: each has its own fields and its
    own ``history`` list, and matches what ``get_job`` reads back."""
    aq = AffinityQueue(make_settings())
    q = aq.queue()
    tasks = [{"type": f"t{i % 2}", "identifyTag": f"tag{i}", "payload": {"i": i}} for i in range(5)]
    try:
        jobs = await q.add_bulk(tasks)
        jobs[0].history.append(jobs[0].error)  # type: ignore[arg-type]
        assert [j.history for j in jobs[1:]] == [[]] * 4
        for job, t in zip(jobs, tasks, strict=True):
            got = await q.get_job(job.id)
            assert got is not None and got.status is JobStatus.PENDING
            assert (job.type, job.identify_tag, job.payload) == (
                t["type"],
                t["identifyTag"],
                t["payload"],
            )
            assert (got.id, got.type, got.identify_tag, got.payload) == (
                job.id, job.type, job.identify_tag, job.payload)  # fmt: skip
            assert (job.status, job.attempts, job.max_attempts) == (JobStatus.PENDING, 0, 1)
        assert len({j.id for j in jobs}) == 5
    finally:
        await aq.aclose()
