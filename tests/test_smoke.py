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
