"""Supervised loops: a Redis that refuses (READONLY after a failover, OOM) or a loop that dies
never stops a queue for good; each fault is logged once, and work resumes when it ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from affinity_queue import AffinityQueue, QueueUnavailableError

from .lifecycle.support import settled, task
from .redis_server import RedisServer
from .support import wait_for

pytestmark = pytest.mark.timeout(60)
FAULT_S = 1.5


@pytest.fixture
async def admin(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


def _refusals(caplog: pytest.LogCaptureFixture, code: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if "Redis refused" in r.getMessage() and code in r.getMessage()
    ]


async def _completes_a_new_job(aq: AffinityQueue) -> None:
    job = await aq.queue().add(task("after", None))
    done = await settled(aq.queue(), job.id, timeout_s=15)
    assert done.result == "ok", done


async def _run_through_fault(aq: AffinityQueue, begin, end) -> None:
    @aq.handler("t")
    async def handle(payload: None) -> str:
        return "ok"

    async with aq:
        await _completes_a_new_job(aq)
        await begin()
        try:
            await asyncio.sleep(FAULT_S)  # the fault lasts: every loop meets it, many times
        finally:
            await end()
        await _completes_a_new_job(aq)
        leader = aq.scheduler()
        await wait_for(
            lambda: _true(), lambda _: leader.is_leader, what="the scheduler leading again"
        )


async def _true() -> bool:
    return True


async def test_a_readonly_redis_after_a_failover_is_ridden_out(
    make_settings, private_redis, admin, caplog
) -> None:
    other = RedisServer().start()
    try:
        aq = AffinityQueue(make_settings(redis_url=private_redis.url, worker_count=2))

        async def demote() -> None:
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))

        async def promote() -> None:
            await admin.execute_command("REPLICAOF", "NO", "ONE")

        await _run_through_fault(aq, demote, promote)
    finally:
        other.cleanup()
    refusals = _refusals(caplog, "ReadOnlyError")
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert refusals[0].exc_info is not None, "the first refusal comes with its traceback"


async def test_an_out_of_memory_redis_is_ridden_out(
    make_settings, private_redis, admin, caplog
) -> None:
    aq = AffinityQueue(make_settings(redis_url=private_redis.url, worker_count=2))

    async def fill() -> None:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")

    async def free() -> None:
        await admin.config_set("maxmemory", "0")

    await _run_through_fault(aq, fill, free)
    refusals = _refusals(caplog, "OutOfMemoryError")
    assert len(refusals) == 1, [r.getMessage() for r in refusals]


async def test_a_waiter_does_not_hang_when_its_reader_dies(make_settings) -> None:
    aq = AffinityQueue(make_settings())  # not started: the job never runs
    try:
        job = await aq.queue().add(task("A"))
        waiting = asyncio.create_task(aq.queue().wait_for(job.id))

        async def reader() -> list[asyncio.Task[object]]:
            return [t for t in asyncio.all_tasks() if t.get_name() == "aq-waiters"]

        (task_,) = await wait_for(reader, lambda ts: len(ts) == 1, what="the reader")
        await asyncio.sleep(0.1)  # the waiter is past its watch, waiting for the message
        task_.cancel()
        with pytest.raises(QueueUnavailableError):
            await asyncio.wait_for(waiting, 5)
    finally:
        await aq.aclose()
