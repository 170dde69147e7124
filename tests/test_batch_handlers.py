"""Batch handlers (issue 14): one call gets up to ``max_size`` queued tasks of one tag, in order;
partial failure, retries, timeouts, cancellation and progress hold per task; one ``advance`` per
batch. Also the run of several jobs a per-task worker takes at once when its jobs are quick."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from affinity_queue import (
    AffinityQueue,
    BatchFailure,
    CancelOutcome,
    JobContext,
    JobStatus,
    QueueSettings,
)
from affinity_queue.errors import JobNotActiveError
from affinity_queue.lua import Scripts
from affinity_queue.worker import PREFETCH, PREFETCH_MAX, next_take

from .engine import Engine
from .lifecycle.support import all_settled, eventually, job_reaches, task

Settings = Callable[..., QueueSettings]


def count_advances(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of jobs each ``advance`` call finished, one entry per call."""
    calls: list[int] = []
    advance_run = Scripts.advance_run

    async def counting(self: Scripts, worker_id: str, done: Any, *args: Any, **kw: Any) -> Any:
        calls.append(len(done))
        return await advance_run(self, worker_id, done, *args, **kw)

    monkeypatch.setattr(Scripts, "advance_run", counting)
    return calls


async def test_a_batch_gets_queued_tasks_of_one_tag_in_order(
    make_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=10))
    calls: list[tuple[set[str], list[int]]] = []
    advances = count_advances(monkeypatch)

    @aq.batch_handler("bulk", max_size=4)
    async def bulk(payloads: list[int], contexts: list[JobContext]) -> list[int]:
        calls.append(({c.identify_tag for c in contexts}, payloads))
        return [p * 2 for p in payloads]

    q = aq.queue()
    jobs = await q.add_bulk([task(tag, i, "bulk") for i in range(25) for tag in ("A", "B")])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert all(j.status is JobStatus.COMPLETED for j in done)
    assert [j.result for j in done] == [i * 2 for i in range(25) for _ in ("A", "B")]
    for tag in ("A", "B"):
        mine = [payloads for tags, payloads in calls if tags == {tag}]
        assert [p for payloads in mine for p in payloads] == list(range(25)), (tag, mine)
    assert all(len(tags) == 1 and 1 <= len(p) <= 4 for tags, p in calls), calls
    assert max(len(p) for _, p in calls) == 4, "queued tasks must share a call"
    finishing = [n for n in advances if n]
    assert sorted(finishing) == sorted(len(p) for _, p in calls), "one advance per batch"


async def test_partial_failure_retries_the_failed_task_and_reruns_the_rest_in_order(
    make_settings: Settings,
) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10, max_attempts=3, retry_backoff_ms=1))
    calls: list[list[int]] = []

    @aq.batch_handler("bulk", max_size=10)
    async def bulk(payloads: list[int]) -> list[int]:
        calls.append(payloads)
        if 3 in payloads and len(calls) == 1:
            i = payloads.index(3)
            raise BatchFailure(i, RuntimeError("row 3 refused"), payloads[:i])
        return payloads

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, "bulk") for i in range(10)])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert calls[0] == list(range(10)), calls
    assert [p for call in calls[1:] for p in call] == list(range(3, 10)), calls
    assert [j.status for j in done] == [JobStatus.COMPLETED] * 10
    assert [j.attempts for j in done] == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1]
    assert [e.type for e in done[3].history] == ["RuntimeError"]
    assert all(not j.history for j in done if j is not done[3])


async def test_a_raising_batch_fails_its_first_task_and_sends_the_others_back(
    make_settings: Settings,
) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10))
    calls: list[list[int]] = []

    @aq.batch_handler("bulk", max_size=5)
    def bulk(payloads: list[int]) -> list[int]:  # sync: runs in a thread
        calls.append(payloads)
        if len(calls) == 1:
            raise ValueError("the bulk insert failed")
        if len(calls) == 2:
            return payloads[:1]  # one result short: a TypeError fails the batch's first task
        return payloads

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, "bulk") for i in range(6)])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert calls[:2] == [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]], calls
    statuses = [j.status for j in done]
    assert statuses == [JobStatus.FAILED, JobStatus.FAILED] + [JobStatus.COMPLETED] * 4
    assert done[0].error is not None and done[0].error.type == "ValueError"
    assert done[1].error is not None and done[1].error.type == "TypeError"
    assert "1 results" in done[1].error.message
    assert [j.attempts for j in done] == [1] * 6


async def test_a_batch_past_its_timeout_fails_its_first_task(make_settings: Settings) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10))
    seen: list[list[JobContext]] = []

    @aq.batch_handler("bulk", max_size=3, timeout_s=0.3)
    async def bulk(payloads: list[int], contexts: list[JobContext]) -> list[int]:
        seen.append(contexts)
        if len(seen) == 1:
            await asyncio.sleep(10)  # cancelled at the timeout
        return payloads

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, "bulk") for i in range(4)])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert all(c.cancelled for c in seen[0]), "every task of the overrun call is told"
    assert [len(c) for c in seen] == [3, 3], seen
    assert [j.status for j in done] == [JobStatus.FAILED] + [JobStatus.COMPLETED] * 3
    assert done[0].error is not None and done[0].error.type == "TimeoutError"


async def test_cancelling_tasks_of_a_running_batch(make_settings: Settings) -> None:
    """A cancelled task of a running batch is flagged in its context; one that fails ends
    cancelled (not retried); one that the batch did not reach never runs."""
    aq = AffinityQueue(make_settings(max_batch_size=10, max_attempts=3, retry_backoff_ms=1))
    running = asyncio.Event()
    contexts: list[JobContext] = []
    calls: list[list[int]] = []

    @aq.batch_handler("bulk", max_size=5)
    async def bulk(payloads: list[int], ctxs: list[JobContext]) -> list[int]:
        calls.append(payloads)
        if len(calls) == 1:
            contexts.extend(ctxs)
            running.set()
            await eventually(lambda: ctxs[2].cancelled and ctxs[4].cancelled, what="flags")
            raise BatchFailure(2, RuntimeError("stopped: cancelled"), payloads[:2])
        return payloads

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, "bulk") for i in range(5)])
    async with aq:
        await asyncio.wait_for(running.wait(), 10)
        assert await q.cancel(jobs[2].id) is CancelOutcome.REQUESTED
        assert await q.cancel(jobs[4].id) is CancelOutcome.REQUESTED
        done = await all_settled(q, [j.id for j in jobs])
    assert not contexts[3].cancelled
    assert calls == [[0, 1, 2, 3, 4], [3]], calls
    assert [j.status for j in done] == [
        JobStatus.COMPLETED,
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
    ]
    assert done[2].attempts == 1, "a cancelled task is not retried"


async def test_progress_is_per_task(make_settings: Settings) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10))
    reported = asyncio.Event()
    go_on = asyncio.Event()

    @aq.batch_handler("bulk", max_size=3)
    async def bulk(payloads: list[int], contexts: list[JobContext]) -> list[int]:
        await contexts[1].set_progress({"rows": 7})
        reported.set()
        await asyncio.wait_for(go_on.wait(), 10)
        return payloads

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, "bulk") for i in range(3)])
    async with aq:
        await asyncio.wait_for(reported.wait(), 10)
        second = await job_reaches(q, jobs[1].id, {JobStatus.ACTIVE})
        first = await q.get_job(jobs[0].id)
        go_on.set()
        await all_settled(q, [j.id for j in jobs])
    assert second.progress == {"rows": 7}
    assert first is not None and first.progress is None


async def test_quick_per_task_jobs_share_advance_calls(
    make_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose jobs finish quickly takes several of its tag at once and runs them one
    after the other: fewer round trips, same order, one job at a time."""
    aq = AffinityQueue(make_settings(max_batch_size=100))
    advances = count_advances(monkeypatch)
    ran: list[int] = []

    @aq.handler("t")
    async def handle(payload: int) -> int:
        ran.append(payload)
        return payload

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i) for i in range(100)])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert ran == list(range(100))
    assert [j.result for j in done] == list(range(100))
    assert len(advances) < 20, f"{len(advances)} advance calls for 100 quick jobs"
    # The records say when each job really ran: one after the other, not all at the take.
    for before, after in itertools.pairwise(done):
        assert before.started_at and before.finished_at and after.started_at
        assert before.started_at <= before.finished_at <= after.started_at, (before, after)


def test_a_quick_worker_takes_what_its_pace_fits_in_the_quick_run_time() -> None:
    assert next_take(20, 0.001) == PREFETCH_MAX  # 50 us a job: 100 fit in QUICK_RUN_S
    assert next_take(20, 0.002) == 50
    assert next_take(5, 0.004) == PREFETCH  # 0.8 ms a job: never fewer than PREFETCH
    assert next_take(1, 0.0) == PREFETCH_MAX


async def test_jobs_of_a_millisecond_are_taken_twenty_at_a_time(
    make_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only jobs quicker than QUICK_RUN_S / PREFETCH are taken more than PREFETCH at once."""
    aq = AffinityQueue(make_settings(max_batch_size=1000))
    advances = count_advances(monkeypatch)
    ran: list[int] = []

    @aq.handler("t")
    async def handle(payload: int) -> None:
        await asyncio.sleep(0.001)
        ran.append(payload)

    q = aq.queue()
    jobs = await q.add_bulk([task("T", i) for i in range(100)])
    async with aq:
        await all_settled(q, [j.id for j in jobs])
    assert ran == list(range(100))
    assert max(advances) <= PREFETCH, advances


async def test_bad_batch_declarations_are_refused(make_settings: Settings) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10))
    with pytest.raises(ValueError, match="is over 200"):
        aq.batch_handler("bulk", max_size=201)(lambda payloads: payloads)
    with pytest.raises(ValueError, match="exceeds MAX_BATCH_SIZE 10"):
        aq.batch_handler("bulk", max_size=11)(lambda payloads: payloads)
    with pytest.raises(ValueError, match="max_size must be a positive integer"):
        aq.batch_handler("bulk", max_size=0)(lambda payloads: payloads)
    with pytest.raises(ValueError, match="2 results"):
        BatchFailure(2, RuntimeError("x"), [1])
    with pytest.raises(ValueError, match="index must be an integer >= 0"):
        BatchFailure(-1, RuntimeError("x"))


async def test_advance_of_a_run_is_safe_to_repeat(engine: Engine) -> None:
    """A batch's ``advance`` whose reply was lost is sent again: the repeat finishes nothing
    twice, and asking again without finishing returns the run the first call started."""
    await engine.elect(max_batch=10)
    await engine.register("w1")
    ids = await engine.add("T", 7)
    await engine.dispatch()
    sizes = {"t": 3}
    first = await engine.scripts.advance_run("w1", [], 1, batch_sizes=sizes)
    assert [j.id for j in first] == ids[:3]
    done = [(j.id, "completed", json.dumps(j.payload)) for j in first[:2]]
    done.append((first[2].id, "", ""))  # not run
    second = await engine.scripts.advance_run("w1", done, 1, batch_sizes=sizes)  # reply "lost"
    assert [j.id for j in second] == ids[2:5]
    assert second[0].attempts == 1, "a job sent back unrun has not used an attempt"
    with pytest.raises(JobNotActiveError):
        await engine.scripts.advance_run("w1", done, 1, batch_sizes=sizes)
    again = await engine.scripts.advance_run("w1", [], 1, batch_sizes=sizes)
    assert [j.id for j in again] == [j.id for j in second]
    finished = [(j.id, "completed", "null") for j in again]
    rest = await engine.scripts.advance_run("w1", finished, 1, batch_sizes=sizes)
    assert [j.id for j in rest] == ids[5:]
    counts = await engine.redis.hgetall(engine.keys.counts)
    assert {k: int(v) for k, v in counts.items() if int(v)} == {"active": 2, "completed": 5}


async def test_a_batch_holds_one_type_and_keeps_the_tag_order(make_settings: Settings) -> None:
    aq = AffinityQueue(make_settings(max_batch_size=10))
    calls: list[tuple[str, Any]] = []

    @aq.batch_handler("bulk", max_size=5)
    async def bulk(payloads: list[int]) -> list[int]:
        calls.append(("bulk", payloads))
        return payloads

    @aq.handler("one")
    async def one(payload: int) -> int:
        calls.append(("one", payload))
        return payload

    kinds = ["bulk", "bulk", "one", "one", "bulk", "bulk", "bulk"]
    q = aq.queue()
    jobs = await q.add_bulk([task("T", i, kind) for i, kind in enumerate(kinds)])
    async with aq:
        done = await all_settled(q, [j.id for j in jobs])
    assert calls == [("bulk", [0, 1]), ("one", 2), ("one", 3), ("bulk", [4, 5, 6])], calls
    assert [j.result for j in done] == list(range(7))


async def test_a_task_taken_behind_a_slow_one_can_be_cancelled(make_settings: Settings) -> None:
    """A quick worker takes several tasks at once; one cancelled while an earlier one of the
    run is slow is 'requested', goes back unstarted after the slow one, and never runs."""
    aq = AffinityQueue(make_settings(max_batch_size=100))
    slow_running, let_go = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @aq.handler("t")
    async def handle(payload: str) -> str:
        ran.append(payload)
        if payload != "slow":
            return payload
        slow_running.set()
        await asyncio.wait_for(let_go.wait(), 10)
        await asyncio.sleep(0.05)  # past QUICK_RUN_S, whatever the cancel call took
        return payload

    q = aq.queue()
    payloads = ["q0", "q1", "q2", "slow", "doomed", "after"]
    jobs = await q.add_bulk([task("T", p) for p in payloads])
    async with aq:
        await asyncio.wait_for(slow_running.wait(), 10)
        doomed = await q.get_job(jobs[4].id)
        assert doomed is not None and doomed.status is JobStatus.ACTIVE, "taken with the run"
        assert await q.cancel(jobs[4].id) is CancelOutcome.REQUESTED
        let_go.set()
        done = await all_settled(q, [j.id for j in jobs])
    assert ran == ["q0", "q1", "q2", "slow", "after"]
    assert [j.status for j in done] == [JobStatus.COMPLETED] * 4 + [
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
    ]
