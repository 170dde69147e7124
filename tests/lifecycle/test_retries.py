"""Retries: attempts and history, per-task options, the backoff bounds, ``Retry`` and
``PermanentFailure``."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from affinity_queue import AffinityQueue, JobContext, JobStatus, PermanentFailure, Retry

from .support import all_settled, job_reaches, settled, task

SLACK_S = 0.3
"""How late the engine may start a retry after it is due (it wakes on a timer, not by polling
at the scheduler interval, but a loaded machine is slow)."""


async def test_a_failing_handler_is_retried_until_it_succeeds(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))
    attempts: list[int] = []

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> dict[str, int]:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt} failed")
        return {"done": ctx.attempt}

    q = aq.queue()
    job = await q.add(task("T"))
    assert job.max_attempts == 3
    async with aq:
        done = await settled(q, job.id)
        failed = await q.list_failed()
    assert failed == [], "a job that succeeded in the end is no dead letter"
    assert attempts == [1, 2, 3]
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"done": 3}
    assert (done.attempts, done.max_attempts) == (3, 3)
    assert [e.attempt for e in done.history] == [1, 2]
    for e in done.history:
        assert (e.type, e.message) == ("ValueError", f"attempt {e.attempt} failed")
        assert "Traceback" in e.traceback and "in handle" in e.traceback
        assert f"ValueError: attempt {e.attempt} failed" in e.traceback


async def test_max_attempts_per_task_overrides_the_queue_default(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_attempts=2, retry_backoff_ms=10))
    runs: Counter[str] = Counter()

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        runs[ctx.job_id] += 1
        raise RuntimeError("always")

    q = aq.queue()
    default = await q.add(task("A"))
    more = await q.add(task("B"), max_attempts=4)
    once = await q.add(task("C"), max_attempts=1)
    assert (default.max_attempts, more.max_attempts, once.max_attempts) == (2, 4, 1)
    async with aq:
        jobs = await all_settled(q, [default.id, more.id, once.id])
    assert runs == {default.id: 2, more.id: 4, once.id: 1}
    for job, n in zip(jobs, (2, 4, 1), strict=True):
        assert job.status is JobStatus.FAILED, job
        assert (job.attempts, job.max_attempts) == (n, n)
        assert [e.attempt for e in job.history] == list(range(1, n + 1))
        assert job.error is not None and job.error.type == "RuntimeError"


async def test_retry_waits_at_least_its_delay(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))
    spans: list[tuple[int, float, float]] = []

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> int:
        now = time.monotonic()
        spans.append((ctx.attempt, now, now))
        if ctx.attempt == 1:
            raise Retry(delay_s=0.4)
        return ctx.attempt

    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        done = await settled(q, job.id)
    assert [a for a, _, _ in spans] == [1, 2]
    gap = spans[1][1] - spans[0][2]
    assert gap >= 0.4 - 0.005, f"the retry ran {gap:.3f} s after the first attempt, before due"
    assert gap < 0.4 + 3.0, f"the retry ran {gap:.3f} s after the first attempt"
    assert done.status is JobStatus.COMPLETED and done.result == 2
    assert [e.attempt for e in done.history] == [1]


async def test_retry_requests_still_count_toward_max_attempts(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))
    attempts: list[int] = []

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise Retry(delay_s=0.01)

    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        done = await settled(q, job.id)
        failed = await q.list_failed()
    assert attempts == [1, 2, 3]
    assert done.status is JobStatus.FAILED
    assert [e.attempt for e in done.history] == [1, 2, 3]
    assert [j.id for j in failed] == [job.id]


async def test_a_permanent_failure_is_not_retried(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=5, retry_backoff_ms=10))
    runs: list[tuple[Any, int]] = []

    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        runs.append((payload, ctx.attempt))
        if payload == "bad":
            raise PermanentFailure("card declined")
        return payload

    q = aq.queue()
    bad = await q.add(task("T", "bad"))
    after = await q.add(task("T", "after"))
    async with aq:
        jobs = await all_settled(q, [bad.id, after.id])
        letters = await q.list_failed()
    assert runs == [("bad", 1), ("after", 1)]
    failed = jobs[0]
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error is not None and "card declined" in failed.error.message
    assert len(failed.history) == 1 and failed.history[0].attempt == 1
    assert "card declined" in failed.history[0].message
    assert [j.id for j in letters] == [bad.id]
    assert jobs[1].status is JobStatus.COMPLETED


def _gaps(starts: dict[str, list[tuple[int, float, float]]], job_id: str) -> list[float]:
    runs = sorted(starts[job_id])
    return [nxt[1] - prev[2] for prev, nxt in itertools.pairwise(runs)]


def _timing_handler(aq: AffinityQueue) -> dict[str, list[tuple[int, float, float]]]:
    """A handler that always fails and notes (attempt, start, end) per job."""
    spans: dict[str, list[tuple[int, float, float]]] = defaultdict(list)

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        now = time.monotonic()
        spans[ctx.job_id].append((ctx.attempt, now, now))
        raise RuntimeError("always")

    return spans


async def test_backoff_is_capped_by_retry_backoff_max(make_settings) -> None:
    # Uncapped, a base of ten minutes would draw delays of up to ten and twenty minutes.
    aq = AffinityQueue(
        make_settings(
            worker_count=1, max_attempts=3, retry_backoff_ms=600_000, retry_backoff_max_ms=100
        )
    )
    spans = _timing_handler(aq)
    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        done = await settled(q, job.id, timeout_s=10)
    assert done.status is JobStatus.FAILED and done.attempts == 3
    gaps = _gaps(spans, job.id)
    assert len(gaps) == 2 and all(g <= 0.1 + SLACK_S for g in gaps), gaps


async def test_backoff_per_task_overrides_the_queue_default(make_settings) -> None:
    # The queue's default draws delays of up to an hour: only the per-task base lets a job
    # retry within seconds. (The chance that the default draws under 10 s is 1 in 360.)
    aq = AffinityQueue(make_settings(worker_count=2, max_attempts=3, retry_backoff_ms=3_600_000))
    spans = _timing_handler(aq)
    q = aq.queue()
    quick = await q.add(task("A"), backoff_ms=50)
    slow = await q.add(task("B"))
    async with aq:
        done = await settled(q, quick.id, timeout_s=10)
        waiting = await q.get_job(slow.id)
    assert done.status is JobStatus.FAILED and done.attempts == 3
    gaps = _gaps(spans, quick.id)
    assert len(gaps) == 2 and gaps[0] <= 0.05 + SLACK_S and gaps[1] <= 0.1 + SLACK_S, gaps
    assert waiting is not None and waiting.attempts == 1, waiting
    assert waiting.status not in (JobStatus.FAILED, JobStatus.COMPLETED), waiting


async def test_backoff_delays_stay_within_the_exponential_bound(make_settings) -> None:
    """Full jitter: attempt n waits random(0, base * 2**(n-1)); only the bound is testable."""
    base_s = 0.15
    aq = AffinityQueue(
        make_settings(worker_count=4, max_attempts=4, retry_backoff_ms=int(base_s * 1000))
    )
    spans = _timing_handler(aq)
    q = aq.queue()
    jobs = await q.add_bulk(task(f"tag-{i}") for i in range(4))
    async with aq:
        await all_settled(q, [j.id for j in jobs])
    for job in jobs:
        gaps = _gaps(spans, job.id)
        assert len(gaps) == 3, gaps
        for n, gap in enumerate(gaps, start=1):
            bound = base_s * 2 ** (n - 1)
            assert gap <= bound + SLACK_S, f"job {job.id}: retry {n} waited {gap:.3f} s > {bound}"


@pytest.mark.parametrize("order", ["strict", "relaxed"])
async def test_a_job_waiting_to_retry_survives_a_restart_of_every_node(
    make_settings, order: str
) -> None:
    settings = make_settings(worker_count=1, max_attempts=2, retry_order=order)
    attempts: list[int] = []
    failed_once = asyncio.Event()

    def register(aq: AffinityQueue) -> None:
        @aq.handler("t")
        async def handle(payload: None, ctx: JobContext) -> int:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                failed_once.set()
                raise Retry(delay_s=0.5)
            return ctx.attempt

    first = AffinityQueue(settings)
    register(first)
    async with first:
        job = await first.queue().add(task("T"))
        await asyncio.wait_for(failed_once.wait(), 10)
        await job_reaches(first.queue(), job.id, {JobStatus.PENDING, JobStatus.DELAYED})
    second = AffinityQueue(settings)
    register(second)
    async with second:
        done = await settled(second.queue(), job.id, timeout_s=5)
    assert attempts == [1, 2]
    assert done.status is JobStatus.COMPLETED and done.result == 2
