"""Delayed tasks: ``delay_s`` / ``run_at``; a delayed task runs no earlier than due, joins the end
of its tag's order when due and does not block earlier-due tasks of its tag."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from affinity_queue import AffinityQueue, InvalidTaskError, JobContext, JobStatus

from .support import all_settled, job_reaches, settled, task

CLOCK_SLACK_S = 0.005
"""Redis time is read in whole milliseconds; the handler reads the same system clock."""


def recording(aq: AffinityQueue, starts: dict[str, float], order: list[str]) -> None:
    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        starts[ctx.job_id] = time.time()
        order.append(payload)
        return payload


async def test_a_delayed_task_runs_no_earlier_than_due(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    starts: dict[str, float] = {}
    order: list[str] = []
    recording(aq, starts, order)
    q = aq.queue()
    async with aq:
        before = time.time()
        job = await q.add(task("T", "later"), delay_s=0.5)
        assert job.status is JobStatus.DELAYED
        assert job.run_at is not None
        assert before + 0.5 - CLOCK_SLACK_S <= job.run_at.timestamp() <= time.time() + 0.5 + 0.01
        stored = await q.get_job(job.id)
        assert stored is not None and stored.status is JobStatus.DELAYED
        assert stored.run_at == job.run_at
        done = await settled(q, job.id, timeout_s=5)
    assert done.status is JobStatus.COMPLETED
    assert starts[job.id] >= job.run_at.timestamp() - CLOCK_SLACK_S, (
        f"ran {job.run_at.timestamp() - starts[job.id]:.3f} s early"
    )
    assert starts[job.id] - before < 0.5 + 3.0


async def test_run_at_in_the_future_and_in_the_past(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    starts: dict[str, float] = {}
    order: list[str] = []
    recording(aq, starts, order)
    q = aq.queue()
    async with aq:
        due = datetime.now(UTC) + timedelta(seconds=0.4)
        future = await q.add(task("A", "future"), run_at=due)
        past = await q.add(task("B", "past"), run_at=datetime.now(UTC) - timedelta(hours=1))
        assert future.status is JobStatus.DELAYED
        assert future.run_at is not None
        assert abs((future.run_at - due).total_seconds()) < 0.002
        assert past.status is JobStatus.PENDING, "a task due in the past is due now"
        jobs = await all_settled(q, [future.id, past.id], timeout_s=5)
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 2
    assert starts[future.id] >= due.timestamp() - CLOCK_SLACK_S
    assert starts[past.id] < starts[future.id]


async def test_a_delayed_task_does_not_block_earlier_due_tasks_of_its_tag(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    starts: dict[str, float] = {}
    order: list[str] = []
    recording(aq, starts, order)
    q = aq.queue()
    delayed = await q.add(task("T", "delayed"), delay_s=0.6)
    now = await q.add_bulk([task("T", "now-1"), task("T", "now-2")])
    async with aq:
        ran = await all_settled(q, [j.id for j in now], timeout_s=5)
        assert [j.status for j in ran] == [JobStatus.COMPLETED] * 2
        waiting = await q.get_job(delayed.id)
        assert waiting is not None and waiting.status is JobStatus.DELAYED, (
            "the earlier-due tasks ran only after the delayed one"
        )
        await settled(q, delayed.id, timeout_s=5)
    assert order == ["now-1", "now-2", "delayed"]
    assert delayed.run_at is not None
    assert starts[delayed.id] >= delayed.run_at.timestamp() - CLOCK_SLACK_S


async def test_a_due_task_joins_the_end_of_its_tags_order(make_settings) -> None:
    # One worker, batches of one: while the blocker runs, the tag's other tasks wait in it.
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=1))
    order: list[str] = []
    blocker_running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: str) -> str:
        order.append(payload)
        if payload == "blocker":
            blocker_running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        return payload

    q = aq.queue()
    async with aq:
        blocker = await q.add(task("T", "blocker"))
        await asyncio.wait_for(blocker_running.wait(), 10)
        before = await q.add(task("T", "before-due"))
        delayed = await q.add(task("T", "delayed"), delay_s=0.2)
        await job_reaches(q, delayed.id, {JobStatus.PENDING}, timeout_s=5)
        after = await q.add(task("T", "after-due"))
        let_go.set()
        await all_settled(q, [blocker.id, before.id, delayed.id, after.id])
    assert order == ["blocker", "before-due", "delayed", "after-due"]


async def test_delayed_bulk_tasks_keep_their_order(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    starts: dict[str, float] = {}
    order: list[str] = []
    recording(aq, starts, order)
    q = aq.queue()
    async with aq:
        jobs = await q.add_bulk((task("T", f"d{i}") for i in range(5)), delay_s=0.3)
        assert all(j.status is JobStatus.DELAYED for j in jobs)
        run_at = {j.run_at for j in jobs}
        assert len(run_at) == 1 and None not in run_at, run_at
        await all_settled(q, [j.id for j in jobs], timeout_s=5)
    assert order == [f"d{i}" for i in range(5)]
    due = jobs[0].run_at.timestamp()  # type: ignore[union-attr]
    assert min(starts.values()) >= due - CLOCK_SLACK_S


async def test_delay_options_are_checked_before_anything_is_written(make_settings) -> None:
    aq = AffinityQueue(make_settings())
    q = aq.queue()
    try:
        soon = datetime.now(UTC) + timedelta(seconds=5)
        with pytest.raises(InvalidTaskError):
            await q.add(task("T"), delay_s=1, run_at=soon)
        with pytest.raises(InvalidTaskError):
            await q.add(task("T"), run_at=soon.replace(tzinfo=None))  # naive: which zone?
        assert (await q.get_queue_stats()).pending == 0
    finally:
        await aq.aclose()


async def test_a_delayed_task_survives_a_restart_of_every_node(make_settings) -> None:
    """The delay lives in Redis: a node that stops before the task is due loses nothing, and
    the next node runs it when due."""
    settings = make_settings(worker_count=1)
    starts: dict[str, float] = {}
    order: list[str] = []
    first = AffinityQueue(settings)
    recording(first, starts, order)
    async with first:
        job = await first.queue().add(task("T", "delayed"), delay_s=0.6)
    assert order == []
    second = AffinityQueue(settings)
    recording(second, starts, order)
    async with second:
        done = await settled(second.queue(), job.id, timeout_s=5)
    assert done.status is JobStatus.COMPLETED and order == ["delayed"]
    assert job.run_at is not None
    assert starts[job.id] >= job.run_at.timestamp() - CLOCK_SLACK_S
