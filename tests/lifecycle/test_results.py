"""Results: ``wait_for`` returns a completed job's result, raises the recorded failure, times out,
and is woken by a notification rather than by polling."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from affinity_queue import (
    AffinityQueue,
    CancelOutcome,
    JobContext,
    JobFailedError,
    JobStatus,
    UnknownJobError,
)

from .support import task


async def test_wait_for_returns_the_result(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    let_go = asyncio.Event()
    finished_at: list[float] = []

    @aq.handler("t")
    async def handle(payload: dict[str, int]) -> dict[str, int]:
        await asyncio.wait_for(let_go.wait(), 10)
        finished_at.append(time.monotonic())
        return {"sum": payload["a"] + payload["b"]}

    q = aq.queue()
    async with aq:
        job = await q.add(task("T", {"a": 1, "b": 2}))
        waiting = asyncio.create_task(q.wait_for(job.id, timeout_s=10))
        await asyncio.sleep(0)
        assert not waiting.done()
        let_go.set()
        assert await waiting == {"sum": 3}
        woke = time.monotonic() - finished_at[0]
        # Already finished: returns at once.
        assert await q.wait_for(job.id, timeout_s=1) == {"sum": 3}
        assert await q.wait_for(job.id) == {"sum": 3}
    assert woke < 0.5, f"wait_for returned {woke:.3f} s after the job finished"


async def test_wait_for_raises_the_recorded_failure(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=2, retry_backoff_ms=10))

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        raise LookupError(f"missing {ctx.attempt}")

    q = aq.queue()
    async with aq:
        job = await q.add(task("T"))
        with pytest.raises(JobFailedError) as caught:
            await q.wait_for(job.id, timeout_s=10)
    failed = caught.value.job
    assert failed.id == job.id and failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "LookupError"
    assert failed.error.message == "missing 2"
    assert [e.attempt for e in failed.history] == [1, 2]
    assert "missing 2" in str(caught.value) or job.id in str(caught.value)


async def test_wait_for_waits_through_a_retry(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise RuntimeError("flaky")
        return ctx.attempt

    q = aq.queue()
    async with aq:
        job = await q.add(task("T"))
        assert await q.wait_for(job.id, timeout_s=10) == 3


async def test_wait_for_times_out(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: None) -> str:
        await asyncio.wait_for(let_go.wait(), 10)
        return "late"

    q = aq.queue()
    async with aq:
        job = await q.add(task("T"))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await q.wait_for(job.id, timeout_s=0.3)
        waited = time.monotonic() - t0
        assert 0.3 - 0.01 <= waited < 2.0, waited
        let_go.set()
        assert await q.wait_for(job.id, timeout_s=10) == "late"


async def test_wait_for_an_unknown_or_cancelled_job(make_settings) -> None:
    aq = AffinityQueue(make_settings())
    q = aq.queue()
    try:
        with pytest.raises(UnknownJobError):
            await q.wait_for("999999", timeout_s=1)
        with pytest.raises(UnknownJobError):
            await q.wait_for("not-an-id", timeout_s=1)
        job = await q.add(task("T"))
        waiting = asyncio.create_task(q.wait_for(job.id, timeout_s=10))
        await asyncio.sleep(0.05)  # not for correctness: so that it is waiting when cancelled
        assert await q.cancel(job.id) is CancelOutcome.CANCELLED
        with pytest.raises(JobFailedError) as caught:
            await waiting
        assert caught.value.job.status is JobStatus.CANCELLED
    finally:
        await aq.aclose()


async def test_many_waiters_each_get_their_own_result(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=4))

    @aq.handler("t")
    async def handle(payload: int) -> int:
        await asyncio.sleep(0.001 * (payload % 5))
        if payload % 7 == 0:
            raise ValueError(str(payload))
        return payload * 10

    q = aq.queue()
    async with aq:
        jobs = await q.add_bulk(task(f"tag-{i % 9}", i) for i in range(60))
        outcomes = await asyncio.gather(
            *(q.wait_for(j.id, timeout_s=20) for j in jobs), return_exceptions=True
        )
    for i, outcome in enumerate(outcomes):
        if i % 7 == 0:
            assert isinstance(outcome, JobFailedError), (i, outcome)
            assert outcome.job.id == jobs[i].id
        else:
            assert outcome == i * 10, (i, outcome)


async def _commands_served(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_wait_for_does_not_poll(make_settings, redis_client) -> None:
    """While it waits, ``wait_for`` sends (almost) nothing: no worker or scheduler runs, so every
    command the server serves in the window is the waiter's (or this test's INFO). A fixed number
    of them (the subscription, the watch script with the commands inside it, its loading on a
    fresh server, the last read) does not grow with the wait; a poll of even 4 Hz would add 16."""
    aq = AffinityQueue(make_settings())
    q = aq.queue()
    try:
        job = await q.add(task("T"))
        before = await _commands_served(redis_client)
        with pytest.raises(TimeoutError):
            await q.wait_for(job.id, timeout_s=4.0)
        served = await _commands_served(redis_client) - before - 1  # our INFO
    finally:
        await aq.aclose()
    assert served <= 12, f"{served} commands in a 4 s wait: it polls"


async def test_wait_for_outlasts_the_redis_timeout(make_settings) -> None:
    """A wait longer than REDIS_TIMEOUT (a command's limit) is not a command timing out."""
    aq = AffinityQueue(make_settings(worker_count=1, redis_timeout_ms=300))

    @aq.handler("t")
    async def handle(payload: None) -> str:
        await asyncio.sleep(1.2)  # the scenario: a job that runs four REDIS_TIMEOUTs
        return "slow but fine"

    q = aq.queue()
    async with aq:
        job = await q.add(task("T"))
        assert await q.wait_for(job.id, timeout_s=10) == "slow but fine"
