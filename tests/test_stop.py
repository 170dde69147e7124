"""Stopping: every queue stops taking tasks at once and drains in parallel; with nothing running,
aclose() is quick whether Redis is up, down or hung; no step's failure leaves a task behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from affinity_queue import AffinityQueue, JobStatus, QueueSettings

from .lifecycle.support import task
from .support import wait_for

pytestmark = pytest.mark.timeout(90)


def _two_queues(
    make_settings: Callable[..., QueueSettings], **overrides: Any
) -> dict[str, QueueSettings]:
    a = make_settings(**overrides)
    name = f"{a.pending_queue_name}-b"
    b = make_settings(
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
        **overrides,
    )
    return {"a": a, "b": b}


def _ours_alive() -> list[str]:
    return [
        t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("aq-") and not t.done()
    ]


async def _leading(aq: AffinityQueue) -> None:
    for name in aq.names:
        s = aq.scheduler(name)
        await wait_for(_now, lambda _, s=s: s.is_leader, what=f"queue {name} leading")


async def _now() -> float:
    return time.monotonic()


async def _value(value: Any) -> Any:
    return value


async def test_aclose_stops_every_queues_intake_at_once_and_drains_them_together(
    make_settings,
) -> None:
    queues = _two_queues(make_settings, worker_count=2, shutdown_grace_period_ms=10_000)
    aq = AffinityQueue(queues["a"], queues={"b": queues["b"]})
    producer = AffinityQueue(queues["a"], queues={"b": queues["b"]})  # never started
    release = asyncio.Event()
    started: list[tuple[str, float]] = []
    for name in aq.names:

        async def hold(payload: str, ctx: Any, name: str = name) -> None:
            started.append((name, time.monotonic()))
            if payload == "hold":
                await release.wait()

        aq.worker(name).register_handler("t", hold)
    try:
        await aq.start()
        await _leading(aq)
        held = [await producer.queue(n).add(task("A", "hold")) for n in aq.names]
        for n, job in zip(aq.names, held, strict=True):
            await wait_for(
                lambda n=n, job=job: producer.queue(n).get_job(job.id),
                lambda j: j is not None and j.status is JobStatus.ACTIVE,
                what=f"the held job of {n} running",
            )
        closing = asyncio.create_task(aq.aclose())
        await asyncio.sleep(0.05)
        late = [await producer.queue(n).add(task("B", "quick")) for n in aq.names]
        await asyncio.sleep(0.5)  # both queues are draining: neither may take the new tasks
        assert not closing.done()
        for n, job in zip(aq.names, late, strict=True):
            got = await producer.queue(n).get_job(job.id)
            assert got is not None and got.started_at is None, (
                f"queue {n} took a task after aclose began: {got}"
            )
        began = time.monotonic()
        release.set()
        await asyncio.wait_for(closing, 10)
        assert time.monotonic() - began < 2.0, "the queues did not drain together"
    finally:
        release.set()
        await aq.aclose()
        await producer.aclose()
    assert sorted(n for n, _ in started) == sorted(aq.names), started
    assert _ours_alive() == []


@pytest.mark.parametrize("fault", ["stopped", "hung"])
async def test_aclose_with_nothing_running_is_quick_when_redis_is_down(
    make_settings, private_redis, fault
) -> None:
    # 200 workers share a pool of 50 connections: with Redis hung, calls that waited for a
    # connection used to time out a wave at a time (one REDIS_TIMEOUT per 50 workers).
    settings = make_settings(
        redis_url=private_redis.url, worker_count=200, shutdown_grace_period_ms=30_000
    )
    aq = AffinityQueue(settings)
    await aq.start()
    await _leading(aq)
    assert private_redis.proc is not None
    pid = private_redis.proc.pid
    if fault == "stopped":
        private_redis.stop()
        limit_s = 1.5  # refused connections fail at once
    else:
        os.kill(pid, signal.SIGSTOP)
        limit_s = settings.redis_timeout_ms / 1000 + 2.5  # one REDIS_TIMEOUT, not one per worker
    try:
        began = time.monotonic()
        await asyncio.wait_for(aq.aclose(), 60)
        took = time.monotonic() - began
    finally:
        if fault == "hung":
            os.kill(pid, signal.SIGCONT)
    assert took < limit_s, f"aclose took {took:.2f} s with Redis {fault}"
    assert _ours_alive() == []


async def test_a_redis_that_refuses_during_stop_leaves_nothing_running(
    make_settings, private_redis, caplog
) -> None:
    queues = _two_queues(make_settings, redis_url=private_redis.url, worker_count=3)
    aq = AffinityQueue(queues["a"], queues={"b": queues["b"]})
    admin = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await aq.start()
        await _leading(aq)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        await asyncio.wait_for(aq.aclose(), 30)
        assert _ours_alive() == [], "aclose left tasks of ours running"
        assert [s for s in (aq.scheduler(n) for n in aq.names) if s.is_leader] == []
        assert any("OutOfMemoryError" in r.getMessage() or r.exc_info for r in caplog.records)
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()
        await aq.aclose()


async def test_a_run_that_wakes_a_stopping_worker_goes_back_unstarted(
    make_settings, redis_client: aioredis.Redis
) -> None:
    """The scheduler binds an idle worker that has begun to stop: the run its wake-up carries
    goes back to the worker's queue without an attempt counted, and stop() hands it to the
    tag, pending, for the next worker."""
    s = make_settings(worker_count=1)
    aq = AffinityQueue(s)
    ran: list[Any] = []

    @aq.handler("t")
    async def handle(payload: Any) -> None:
        ran.append(payload)

    async with aq:
        (wid,) = await wait_for(
            lambda: _value(aq.worker().worker_ids), lambda ids: len(ids) == 1, what="registered"
        )
        state = s.keys.worker_state(wid)
        # Idle, having said what it takes next: dispatch will start its run.
        await wait_for(
            lambda: redis_client.hget(state, "take"), bool, what="the worker waits for work"
        )
        aq.worker().begin_stop()
        jobs = await aq.queue().add_bulk(task("A", i) for i in range(3))
        queue = s.keys.worker_queue(wid)
        await wait_for(
            lambda: redis_client.lrange(queue, 0, -1),
            lambda ids: ids == [j.id for j in jobs],
            what="the carried run back in the worker's queue",
        )
        assert await redis_client.hget(state, "active") == ""
        for job in jobs:
            got = await aq.queue().get_job(job.id)
            assert got is not None and got.attempts == 0 and got.status is JobStatus.ASSIGNED
    assert ran == []
    reader = AffinityQueue(s)  # never started: reads only
    for job in jobs:
        got = await reader.queue().get_job(job.id)
        assert got is not None and got.status is JobStatus.PENDING and got.attempts == 0
    await reader.aclose()
