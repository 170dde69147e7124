"""Cancellation: pending, delayed and assigned jobs never run; a running job's context flag is
set; unknown and finished jobs say so."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from affinity_queue import AffinityQueue, CancelOutcome, JobContext, JobStatus, Retry

from .support import TERMINAL, all_settled, job_reaches, settled, task


def counting(aq: AffinityQueue, ran: list[str]) -> None:
    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> Any:
        ran.append(ctx.job_id)
        return payload


async def test_a_cancelled_pending_job_never_runs(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    ran: list[str] = []
    counting(aq, ran)
    q = aq.queue()
    doomed, behind = await q.add_bulk([task("T", "doomed"), task("T", "behind")])
    alone = await q.add(task("alone", "x"))
    assert await q.cancel(doomed.id) is CancelOutcome.CANCELLED
    assert await q.cancel(alone.id) is CancelOutcome.CANCELLED
    got = await q.get_job(doomed.id)
    assert got is not None and got.status is JobStatus.CANCELLED
    assert (await q.get_queue_stats()).pending == 1
    async with aq:
        await settled(q, behind.id)
        # The tag whose only job was cancelled still works.
        again = await q.add(task("alone", "y"))
        await settled(q, again.id)
        stats = await q.get_queue_stats()
        assert await q.cancel(doomed.id) is CancelOutcome.FINISHED
    assert ran == [behind.id, again.id]
    assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0), stats


async def test_a_cancelled_delayed_job_never_runs(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    ran: list[str] = []
    counting(aq, ran)
    q = aq.queue()
    async with aq:
        doomed = await q.add(task("T", "doomed"), delay_s=0.3)
        sentinel = await q.add(task("T", "sentinel"), delay_s=0.5)
        assert await q.cancel(doomed.id) is CancelOutcome.CANCELLED
        got = await q.get_job(doomed.id)
        assert got is not None and got.status is JobStatus.CANCELLED
        await settled(q, sentinel.id, timeout_s=5)  # due after the cancelled one
        got = await q.get_job(doomed.id)
        stats = await q.get_queue_stats()
    assert ran == [sentinel.id]
    assert got is not None and got.status is JobStatus.CANCELLED
    assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0), stats


async def test_a_cancelled_assigned_job_never_runs(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=5))
    ran: list[str] = []
    blocker_running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        ran.append(payload)
        if payload == "blocker":
            blocker_running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        return payload

    q = aq.queue()
    async with aq:
        blocker, doomed, behind = await q.add_bulk(
            task("T", p) for p in ("blocker", "doomed", "behind")
        )
        await asyncio.wait_for(blocker_running.wait(), 10)
        await job_reaches(q, doomed.id, {JobStatus.ASSIGNED})
        assert await q.cancel(doomed.id) is CancelOutcome.CANCELLED
        let_go.set()
        jobs = await all_settled(q, [blocker.id, doomed.id, behind.id])
        stats = await q.get_queue_stats()
    assert ran == ["blocker", "behind"]
    assert [j.status for j in jobs] == [
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
    ]
    assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0), stats
    for w in stats.workers:
        assert (w.status, w.current_identify_tag, w.queue_length) == ("idle", None, 0), w


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_cancelling_a_running_job_sets_its_context_flag(make_settings, kind: str) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, heartbeat_interval_ms=300))
    started = threading.Event()
    seen: dict[str, Any] = {}

    def note_start(ctx: JobContext) -> None:
        seen["initially"] = ctx.cancelled
        started.set()

    async def watch_async(payload: None, ctx: JobContext) -> str:
        note_start(ctx)
        deadline = time.monotonic() + 10
        while not ctx.cancelled:
            if time.monotonic() > deadline:
                return "never saw it"
            await asyncio.sleep(0.01)
        seen["at"] = time.monotonic()
        return "stopped"

    def watch_sync(payload: None, ctx: JobContext) -> str:
        note_start(ctx)
        deadline = time.monotonic() + 10
        while not ctx.cancelled:
            if time.monotonic() > deadline:
                return "never saw it"
            time.sleep(0.01)
        seen["at"] = time.monotonic()
        return "stopped"

    aq.worker().register_handler("watch", watch_async if kind == "async" else watch_sync)

    @aq.handler("next")
    async def after(payload: None) -> str:
        return "ran"

    q = aq.queue()
    job = await q.add(task("T", None, "watch"))
    nxt = await q.add(task("T", None, "next"))
    async with aq:
        assert await asyncio.to_thread(started.wait, 10)
        asked = time.monotonic()
        assert await q.cancel(job.id) is CancelOutcome.REQUESTED
        done, later = await all_settled(q, [job.id, nxt.id], timeout_s=15)
        assert await q.cancel(job.id) is CancelOutcome.FINISHED
    assert seen["initially"] is False
    assert "at" in seen, "the handler never saw ctx.cancelled"
    # "Within about one HEARTBEAT_INTERVAL" (0.3 s here); generous for a loaded machine.
    assert seen["at"] - asked < 2.0, seen["at"] - asked
    assert done.status in TERMINAL
    assert later.status is JobStatus.COMPLETED and later.result == "ran"


async def test_cancelling_unknown_and_finished_jobs_says_so(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("t")
    async def handle(payload: bool) -> bool:
        if not payload:
            raise RuntimeError("no")
        return payload

    q = aq.queue()
    assert await q.cancel("999999") is CancelOutcome.UNKNOWN
    assert await q.cancel("not-an-id") is CancelOutcome.UNKNOWN
    ok, bad = await q.add_bulk([task("T", True), task("T", False)])
    async with aq:
        await all_settled(q, [ok.id, bad.id])
        assert await q.cancel(ok.id) is CancelOutcome.FINISHED
        assert await q.cancel(bad.id) is CancelOutcome.FINISHED
        done, failed = await q.get_job(ok.id), await q.get_job(bad.id)
        assert [j.id for j in await q.list_failed()] == [bad.id]
    assert done is not None and done.status is JobStatus.COMPLETED and done.result is True
    assert failed is not None and failed.status is JobStatus.FAILED


async def test_a_cancelled_running_job_that_then_fails_is_not_retried(make_settings) -> None:
    """A handler that stops by raising once it sees ``ctx.cancelled`` must not be run again."""
    aq = AffinityQueue(
        make_settings(
            worker_count=1, heartbeat_interval_ms=100, max_attempts=3, retry_backoff_ms=10
        )
    )
    started = asyncio.Event()
    attempts: list[int] = []

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        started.set()
        deadline = time.monotonic() + 3
        while not ctx.cancelled:  # a handler polls its flag between steps of its work
            if time.monotonic() > deadline:
                raise RuntimeError("gave up waiting")
            await asyncio.sleep(0.01)
        raise RuntimeError("stopped: cancelled")

    q = aq.queue()
    job = await q.add(task("T"))
    async with aq:
        await asyncio.wait_for(started.wait(), 10)
        assert await q.cancel(job.id) is CancelOutcome.REQUESTED
        done = await settled(q, job.id, timeout_s=15)
    assert attempts == [1], f"a job whose cancellation was requested ran again: {attempts}"
    assert done.status in (JobStatus.CANCELLED, JobStatus.FAILED), done


async def test_cancelling_a_job_that_waits_to_retry_frees_its_tag(make_settings) -> None:
    """Strict order holds a tag behind a retrying job; once that job is cancelled there is
    nothing to wait for."""
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=2))
    failed_once = asyncio.Event()
    ran: list[str] = []

    @aq.handler("t")
    async def handle(payload: str) -> str:
        ran.append(payload)
        if payload == "retried":
            failed_once.set()
            raise Retry(delay_s=30)
        return payload

    q = aq.queue()
    retried, behind = await q.add_bulk([task("T", "retried"), task("T", "behind")])
    async with aq:
        await asyncio.wait_for(failed_once.wait(), 10)
        await job_reaches(q, retried.id, {JobStatus.PENDING, JobStatus.DELAYED})
        assert await q.cancel(retried.id) is CancelOutcome.CANCELLED
        done = await settled(q, behind.id, timeout_s=5)
    assert done.status is JobStatus.COMPLETED
    assert ran == ["retried", "behind"]
