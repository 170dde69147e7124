"""Timeouts: an async handler past its timeout is cancelled; a sync one, which cannot be, keeps its
worker (and so its tag) until it returns, and its late result is ignored; the attempt fails with
``TimeoutError`` and the worker goes on. A per-task timeout wins
over the handler's, which wins over the queue's ``TASK_TIMEOUT``."""

from __future__ import annotations

import asyncio
import threading
import time

from affinity_queue import AffinityQueue, JobContext, JobStatus

from .support import all_settled, job_reaches, settled, task


async def test_an_async_handler_past_its_timeout_is_cancelled_and_the_worker_goes_on(
    make_settings,
) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    started: list[float] = []
    cancelled: list[float] = []

    async def slow(payload: None, ctx: JobContext) -> str:
        started.append(time.monotonic())
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise
        return "finished"

    aq.worker().register_handler("slow", slow, timeout_s=0.2)

    @aq.handler("fast")
    async def fast(payload: None, ctx: JobContext) -> str:
        return ctx.worker_id

    q = aq.queue()
    slow_job = await q.add(task("T", None, "slow"))
    fast_job = await q.add(task("T", None, "fast"))
    async with aq:
        timed_out, after = await all_settled(q, [slow_job.id, fast_job.id], timeout_s=5)
    assert timed_out.status is JobStatus.FAILED, timed_out
    assert timed_out.error is not None and timed_out.error.type == "TimeoutError", timed_out.error
    assert [e.type for e in timed_out.history] == ["TimeoutError"]
    assert cancelled, "the handler was never cancelled"
    assert 0.2 - 0.01 <= cancelled[0] - started[0] < 2.0, cancelled[0] - started[0]
    assert after.status is JobStatus.COMPLETED
    assert after.result == timed_out.worker_id, "the next task did not run on the same worker"


async def test_a_sync_handler_past_its_timeout_holds_its_worker_and_its_late_result_is_ignored(
    make_settings,
) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    release = threading.Event()

    def stuck(payload: int) -> str:
        release.wait(10)
        return f"late {payload}"

    aq.worker().register_handler("stuck", stuck, timeout_s=0.2)

    @aq.handler("sync-next")
    def sync_next(payload: None) -> str:
        return "ran"

    q = aq.queue()
    stuck_jobs = [await q.add(task("T", 0, "stuck"))]
    nxt = await q.add(task("T", None, "sync-next"))
    try:
        async with aq:
            await job_reaches(q, stuck_jobs[0].id, {JobStatus.ACTIVE})
            await asyncio.sleep(0.5)  # well past the timeout: nothing else of T may start
            first, later = await q.get_job(stuck_jobs[0].id), await q.get_job(nxt.id)
            assert first is not None and first.status is JobStatus.ACTIVE, first
            assert later is not None and later.started_at is None, later
            release.set()
            done = await settled(q, nxt.id, timeout_s=10)
            assert done.status is JobStatus.COMPLETED and done.result == "ran"
            for job in stuck_jobs:
                got = await q.get_job(job.id)
                assert got is not None and got.status is JobStatus.FAILED, got
                assert got.result is None and got.error is not None
                assert got.error.type == "TimeoutError"
    finally:
        release.set()


async def test_timeouts_per_task_then_per_handler_then_per_queue(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=3, task_timeout_ms=300))

    async def nap(payload: float) -> float:
        await asyncio.sleep(payload)
        return payload

    aq.worker().register_handler("plain", nap)  # the queue's 0.3 s applies

    @aq.handler("short", timeout_s=0.2)
    async def short(payload: float) -> float:
        return await nap(payload)

    @aq.handler("long", timeout_s=5)
    async def long(payload: float) -> float:
        return await nap(payload)

    q = aq.queue()
    cases = {
        "queue default cuts": (await q.add(task("a", 3.0, "plain")), JobStatus.FAILED),
        "queue default lets": (await q.add(task("b", 0.05, "plain")), JobStatus.COMPLETED),
        "handler cuts": (await q.add(task("c", 3.0, "short")), JobStatus.FAILED),
        "handler beats queue": (await q.add(task("d", 0.6, "long")), JobStatus.COMPLETED),
        "task beats handler (longer)": (
            await q.add(task("e", 0.6, "short"), timeout_s=2),
            JobStatus.COMPLETED,
        ),
        "task beats handler (shorter)": (
            await q.add(task("f", 3.0, "long"), timeout_s=0.2),
            JobStatus.FAILED,
        ),
    }
    async with aq:
        jobs = await all_settled(q, [j.id for j, _ in cases.values()], timeout_s=10)
    for (name, (_, want)), job in zip(cases.items(), jobs, strict=True):
        assert job.status is want, f"{name}: {job}"
        if want is JobStatus.FAILED:
            assert job.error is not None and job.error.type == "TimeoutError", f"{name}: {job}"
            assert job.started_at and job.finished_at
            assert (job.finished_at - job.started_at).total_seconds() < 2.0, name


async def test_a_timed_out_attempt_is_retried(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=2, retry_backoff_ms=10))
    attempts: list[int] = []

    @aq.handler("t", timeout_s=0.2)
    async def handle(payload: None, ctx: JobContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(10)
        return ctx.attempt

    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        done = await settled(q, job.id, timeout_s=5)
    assert attempts == [1, 2]
    assert done.status is JobStatus.COMPLETED and done.result == 2
    assert [(e.attempt, e.type) for e in done.history] == [(1, "TimeoutError")]


async def test_a_handlers_own_timeout_error_is_reported_as_raised(make_settings) -> None:
    """With no timeout configured, a ``TimeoutError`` the handler raises itself (an upstream call
    timing out) is its failure, with its own message, not a timeout of the attempt."""
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("t")
    def handle(payload: None) -> None:
        raise TimeoutError("upstream took too long")

    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        done = await settled(q, job.id)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "TimeoutError"
    assert done.error.message == "upstream took too long", done.error.message


async def test_the_timeout_counts_the_handlers_code_before_its_first_wait(make_settings) -> None:
    """From Python 3.12 a handler starts eagerly: its code up to its first ``await`` runs before
    the worker waits on it. That time counts: 0.3 s of work, then a short wait, past a 0.1 s
    timeout, times out (it did on 3.11, where the handler starts in the next loop turn)."""
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("busy", timeout_s=0.1)
    async def busy(payload: None) -> str:
        time.sleep(0.3)  # noqa: ASYNC251 -- work that never yields
        await asyncio.sleep(0.02)
        return "finished"

    q = aq.queue()
    job = await q.add(task("T", None, "busy"))
    async with aq:
        (done,) = await all_settled(q, [job.id], timeout_s=5)
    assert done.error is not None and done.error.type == "TimeoutError", done


async def test_a_run_of_quick_handlers_lets_the_event_loop_turn(make_settings) -> None:
    """Handlers that never wait (and, from 3.12, start eagerly) must not hold the event loop for
    a whole run of their tag: between two turns of another task, at most a couple of them run.
    Each takes 2 ms, under QUICK_RUN_S (so runs are long) and over YIELD_S."""
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=100))
    calls = 0
    most = 0  # handler calls between two turns of the ticker

    @aq.handler("quick")
    async def quick(payload: int) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.002)  # noqa: ASYNC251 -- work that never yields

    async def ticker() -> None:
        nonlocal calls, most
        while True:
            most, calls = max(most, calls), 0
            await asyncio.sleep(0)

    q = aq.queue()
    jobs = await q.add_bulk(task("T", i, "quick") for i in range(200))
    async with aq:
        tick = asyncio.create_task(ticker())
        try:
            await all_settled(q, [j.id for j in jobs], timeout_s=30)
        finally:
            tick.cancel()
    assert 1 <= most <= 2, f"{most} handlers ran between two turns of the event loop"
