"""Per-tag order under retries, checked from an execution ledger.

strict (the default): a job that will retry keeps the head of its tag; no later task of the tag
starts before it has run for the last time; other tags flow meanwhile.
relaxed: the tag goes on while the retry waits; the retry re-enters at the front of its tag when
its delay has passed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus, Retry

from .support import Exec, all_settled, assert_no_overlap, by_tag, job_reaches, task

TAGS = ("A", "B", "C", "D")
PER_TAG = 6
# (tag, seq) -> how it fails: attempts that raise Retry(0.25) / a ValueError.
RETRY_TWICE = ("A", 1)  # Retry(delay_s=0.25) on attempts 1 and 2, then succeeds
FAIL_ONCE = ("B", 3)  # ValueError on attempt 1 (backoff), then succeeds
FAIL_ALWAYS = ("D", 2)  # ValueError on every attempt: a dead letter after 3
EXPECTED_ATTEMPTS = {RETRY_TWICE: 3, FAIL_ONCE: 2, FAIL_ALWAYS: 3}


def recording_handler(aq: AffinityQueue, runs: list[Exec]) -> None:
    @aq.handler("t")
    async def handle(payload: dict[str, Any], ctx: JobContext) -> int:
        start = time.monotonic()
        key = (ctx.identify_tag, payload["seq"])
        await asyncio.sleep(0.003)
        fail: BaseException | None = None
        if key == RETRY_TWICE and ctx.attempt < 3:
            fail = Retry(delay_s=0.25)
        elif (key == FAIL_ONCE and ctx.attempt == 1) or key == FAIL_ALWAYS:
            fail = ValueError(f"{key} attempt {ctx.attempt}")
        runs.append(
            Exec(
                ctx.job_id,
                ctx.identify_tag,
                payload["seq"],
                ctx.attempt,
                ctx.worker_id,
                start,
                time.monotonic(),
                fail is None,
            )
        )
        if fail is not None:
            raise fail
        return int(payload["seq"])


async def run_workload(make_settings, order: str | None) -> list[Exec]:
    extra = {} if order is None else {"retry_order": order}
    aq = AffinityQueue(
        make_settings(
            worker_count=2, max_batch_size=4, max_attempts=3, retry_backoff_ms=100, **extra
        )
    )
    runs: list[Exec] = []
    recording_handler(aq, runs)
    q = aq.queue()
    # Interleaved: A0 B0 C0 D0 A1 B1 ...
    jobs = await q.add_bulk(task(t, {"seq": s}) for s in range(PER_TAG) for t in TAGS)
    async with aq:
        settled = await all_settled(q, [j.id for j in jobs])
    for job in settled:
        key = (job.identify_tag, job.payload["seq"])  # type: ignore[index]
        want = JobStatus.FAILED if key == FAIL_ALWAYS else JobStatus.COMPLETED
        assert job.status is want, job
        assert job.attempts == EXPECTED_ATTEMPTS.get(key, 1), job
    per_job: dict[tuple[str, int], list[int]] = {}
    for r in runs:
        per_job.setdefault((r.tag, r.seq), []).append(r.attempt)
    for key, attempts in per_job.items():
        assert sorted(attempts) == list(range(1, EXPECTED_ATTEMPTS.get(key, 1) + 1)), key
    assert len(per_job) == len(TAGS) * PER_TAG
    return runs


def first_executions_in_add_order(runs: list[Exec]) -> None:
    for tag, group in by_tag(runs).items():
        firsts = [r.seq for r in group if r.attempt == 1]
        assert firsts == list(range(PER_TAG)), f"tag {tag}: first executions in order {firsts}"


async def test_strict_order_holds_a_tag_behind_its_retrying_job(make_settings) -> None:
    runs = await run_workload(make_settings, None)  # strict is the default
    assert_no_overlap(runs)
    first_executions_in_add_order(runs)
    grouped = by_tag(runs)
    for tag, group in grouped.items():
        seqs = [r.seq for r in group]
        assert seqs == sorted(seqs), f"tag {tag}: a later task overtook a retrying one: {seqs}"
    for tag, seq in EXPECTED_ATTEMPTS:
        group = grouped[tag]
        last = max((r for r in group if r.seq == seq), key=lambda r: r.attempt)
        later = [r for r in group if r.seq > seq]
        assert later, tag
        assert min(r.start for r in later) >= last.end, (
            f"tag {tag}: task {seq + 1} started before task {seq}'s last attempt ended"
        )
    # Other tags flow while A waits out its two 0.25 s delays.
    a_last = max((r for r in grouped["A"] if r.seq == 1), key=lambda r: r.attempt)
    assert max(r.end for r in grouped["C"]) < a_last.start, "tag C waited for A's retries"


async def test_relaxed_order_lets_the_tag_go_on_while_a_retry_waits(make_settings) -> None:
    runs = await run_workload(make_settings, "relaxed")
    assert_no_overlap(runs)
    first_executions_in_add_order(runs)
    grouped = by_tag(runs)
    a1 = {r.attempt: r for r in grouped["A"] if r.seq == 1}
    overtook = [r.seq for r in grouped["A"] if r.seq > 1 and r.start < a1[2].start]
    assert overtook, "relaxed: no later task of A ran while its retry waited 0.25 s"


async def test_relaxed_retry_reenters_at_the_front_of_its_tag_when_due(make_settings) -> None:
    aq = AffinityQueue(
        make_settings(worker_count=1, max_batch_size=1, max_attempts=2, retry_order="relaxed")
    )
    order: list[tuple[str, int]] = []
    blocker_running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        order.append((payload, ctx.attempt))
        if payload == "retried" and ctx.attempt == 1:
            raise Retry(delay_s=0.2)
        if payload == "blocker":
            blocker_running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        return payload

    q = aq.queue()
    jobs = await q.add_bulk(task("T", p) for p in ("retried", "blocker", "w1", "w2"))
    async with aq:
        await asyncio.wait_for(blocker_running.wait(), 10)
        delayed = await q.get_job(jobs[0].id)
        assert delayed is not None and delayed.status is JobStatus.DELAYED, delayed
        # Due: it re-enters its tag (pending) while the blocker still runs.
        await job_reaches(q, jobs[0].id, {JobStatus.PENDING}, timeout_s=5)
        let_go.set()
        await all_settled(q, [j.id for j in jobs])
    assert order == [("retried", 1), ("blocker", 1), ("retried", 2), ("w1", 1), ("w2", 1)]


async def test_strict_retry_waits_in_its_tag_as_pending(make_settings) -> None:
    """In strict order a retrying job keeps its tag's head: later tasks of the tag stay where
    they were (even those already in the worker's batch) until it has run again."""
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=5, max_attempts=2))
    order: list[tuple[str, int]] = []
    first_failed = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        order.append((payload, ctx.attempt))
        if payload == "retried" and ctx.attempt == 1:
            first_failed.set()
            raise Retry(delay_s=0.5)
        return payload

    q = aq.queue()
    jobs = await q.add_bulk(task("T", p) for p in ("retried", "w1", "w2", "w3"))
    async with aq:
        await asyncio.wait_for(first_failed.wait(), 10)
        waiting = await job_reaches(
            q, jobs[0].id, {JobStatus.PENDING, JobStatus.DELAYED}, timeout_s=5
        )
        assert waiting.attempts == 1
        for j in jobs[1:]:
            got = await q.get_job(j.id)
            assert got is not None and got.status is JobStatus.PENDING, got
        await all_settled(q, [j.id for j in jobs])
    assert order == [("retried", 1), ("retried", 2), ("w1", 1), ("w2", 1), ("w3", 1)]
