"""Dead letters: a job out of attempts keeps its whole history; list, requeue (to the front of its
tag, attempts starting over) and delete them."""

from __future__ import annotations

import asyncio
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus

from .support import all_settled, settled, task


async def test_a_job_out_of_attempts_is_a_dead_letter_with_its_history(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))

    @aq.handler("t")
    async def handle(payload: None, ctx: JobContext) -> None:
        raise ValueError(f"boom {ctx.attempt}")

    q = aq.queue()
    job = await q.add(task("T", {"order": 7}))
    async with aq:
        dead = await settled(q, job.id)
        listed = await q.list_failed()
    assert dead.status is JobStatus.FAILED
    assert (dead.attempts, dead.max_attempts) == (3, 3)
    assert dead.result is None and dead.finished_at is not None
    assert [e.attempt for e in dead.history] == [1, 2, 3]
    for e in dead.history:
        assert (e.type, e.message) == ("ValueError", f"boom {e.attempt}")
        assert e.traceback.startswith("Traceback"), e.traceback
        assert "in handle" in e.traceback and f"ValueError: boom {e.attempt}" in e.traceback
    assert dead.error is not None and (dead.error.type, dead.error.message) == (
        "ValueError",
        "boom 3",
    )
    assert [j.id for j in listed] == [job.id]
    (letter,) = listed
    assert letter.payload == {"order": 7} and letter.identify_tag == "T"
    assert [e.attempt for e in letter.history] == [1, 2, 3]


async def test_dead_letters_are_listed_newest_first_with_offset_and_limit(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=10))

    @aq.handler("t")
    async def handle(payload: int) -> int:
        await asyncio.sleep(0.005)  # distinct finish times (ms)
        if payload % 2:
            raise RuntimeError(f"odd {payload}")
        return payload

    q = aq.queue()
    # One tag on one worker: they finish in add order.
    jobs = await q.add_bulk(task("T", i) for i in range(10))
    failed = [j.id for j in jobs if j.payload % 2]  # type: ignore[operator]
    async with aq:
        await all_settled(q, [j.id for j in jobs])
        newest_first = list(reversed(failed))
        assert [j.id for j in await q.list_failed()] == newest_first
        assert [j.id for j in await q.list_failed(offset=1, limit=2)] == newest_first[1:3]
        assert [j.id for j in await q.list_failed(limit=1)] == newest_first[:1]
        assert [j.id for j in await q.list_failed(offset=4)] == newest_first[4:]
        assert await q.list_failed(offset=5) == []
        assert await q.list_failed(limit=0) == []
        assert await q.list_failed(offset=2, limit=0) == []
        for letter in await q.list_failed():
            assert letter.status is JobStatus.FAILED
            assert letter.error is not None and letter.error.message == f"odd {letter.payload}"


async def test_a_requeued_dead_letter_runs_again_before_its_tags_waiting_tasks(
    make_settings,
) -> None:
    # One worker, batches of one: while the blocker runs, the later tasks wait in the tag.
    aq = AffinityQueue(
        make_settings(worker_count=1, max_batch_size=1, max_attempts=2, retry_backoff_ms=10)
    )
    order: list[tuple[Any, int]] = []
    healed = False
    blocker_running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: str, ctx: JobContext) -> str:
        order.append((payload, ctx.attempt))
        if payload == "dead" and not healed:
            raise ValueError("not yet")
        if payload == "blocker":
            blocker_running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        return payload

    q = aq.queue()
    async with aq:
        dead = await q.add(task("T", "dead"))
        assert (await settled(q, dead.id)).status is JobStatus.FAILED
        await q.add(task("T", "blocker"))
        await asyncio.wait_for(blocker_running.wait(), 10)
        later = await q.add_bulk([task("T", "later-1"), task("T", "later-2")])
        healed = True
        assert await q.requeue_failed(dead.id) is True
        requeued = await q.get_job(dead.id)
        assert requeued is not None
        assert requeued.status is JobStatus.PENDING and requeued.attempts == 0, requeued
        assert await q.list_failed() == []
        assert await q.requeue_failed(dead.id) is False, "requeued twice"
        assert (await q.get_queue_stats()).pending == 3
        let_go.set()
        jobs = await all_settled(q, [dead.id, *(j.id for j in later)])
    assert order == [
        ("dead", 1),
        ("dead", 2),
        ("blocker", 1),
        ("dead", 1),  # attempts start over, and it runs first
        ("later-1", 1),
        ("later-2", 1),
    ]
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 3
    assert jobs[0].result == "dead" and jobs[0].attempts == 1


async def test_requeue_refuses_what_is_not_a_dead_letter(make_settings) -> None:
    settings = make_settings(worker_count=1)
    aq = AffinityQueue(settings)

    @aq.handler("t")
    async def handle(payload: None) -> None:
        return None

    done = await aq.queue().add(task("T"))
    async with aq:
        await settled(aq.queue(), done.id)
    producer = AffinityQueue(settings)  # never started: what it adds stays pending
    try:
        q = producer.queue()
        pending = await q.add(task("T"))
        assert await q.requeue_failed(done.id) is False
        assert await q.requeue_failed(pending.id) is False
        assert await q.requeue_failed("999999") is False
        assert await q.requeue_failed("not-an-id") is False
        got, still = await q.get_job(done.id), await q.get_job(pending.id)
        assert got is not None and got.status is JobStatus.COMPLETED
        assert still is not None and still.status is JobStatus.PENDING
    finally:
        await producer.aclose()


async def test_a_deleted_dead_letter_is_gone(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("t")
    async def handle(payload: int) -> int:
        if payload < 2:
            raise RuntimeError("no")
        return payload

    q = aq.queue()
    jobs = await q.add_bulk(task("T", i) for i in range(3))
    first, second, ok = (j.id for j in jobs)
    async with aq:
        await all_settled(q, [first, second, ok])
        assert {j.id for j in await q.list_failed()} == {first, second}
        assert await q.delete_failed(first) is True
        assert [j.id for j in await q.list_failed()] == [second]
        assert await q.get_job(first) is None
        assert await q.delete_failed(first) is False, "deleted twice"
        assert await q.requeue_failed(first) is False
        assert await q.delete_failed(ok) is False, "a completed job is no dead letter"
        assert await q.delete_failed("999999") is False
        got = await q.get_job(ok)
        assert got is not None and got.status is JobStatus.COMPLETED
