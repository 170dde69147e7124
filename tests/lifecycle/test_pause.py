"""Pause and resume: the whole queue (nothing new is placed; running jobs finish) and one tag (its
tasks wait, the others flow)."""

from __future__ import annotations

import asyncio
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus

from .support import TERMINAL, all_settled, holds, job_reaches, settled, task

WINDOW_S = 0.6
"""How long "nothing happens" is watched: three scheduler intervals, far beyond the milliseconds
an event-driven placement takes."""


def recording(aq: AffinityQueue, order: list[Any], blocker: dict[str, asyncio.Event]) -> None:
    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> Any:
        order.append(payload)
        if payload == "blocker":
            blocker["running"].set()
            await asyncio.wait_for(blocker["let_go"].wait(), 10)
        return payload


def events() -> dict[str, asyncio.Event]:
    return {"running": asyncio.Event(), "let_go": asyncio.Event()}


async def test_a_paused_queue_places_nothing_and_lets_running_jobs_finish(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=1))
    order: list[Any] = []
    blocker = events()
    recording(aq, order, blocker)
    q = aq.queue()
    async with aq:
        running = await q.add(task("A", "blocker"))
        await asyncio.wait_for(blocker["running"].wait(), 10)
        await q.pause()
        waiting = await q.add_bulk(task(tag, f"{tag}{i}") for i in range(3) for tag in "AB")
        blocker["let_go"].set()
        done = await settled(q, running.id)
        assert done.status is JobStatus.COMPLETED, "the running job did not finish"

        async def nothing_placed() -> bool:
            s = await q.get_queue_stats()
            return (s.pending, s.assigned, s.active) == (6, 0, 0)

        await holds(nothing_placed, for_s=WINDOW_S, what="paused queue: all six wait")
        assert order == ["blocker"]
        await q.resume()
        await all_settled(q, [j.id for j in waiting], timeout_s=10)
    assert sorted(order[1:]) == sorted(j.payload for j in waiting)  # type: ignore[type-var]
    assert [p for p in order if str(p).startswith("A")] == ["A0", "A1", "A2"]


async def test_a_paused_tag_waits_while_the_others_flow(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    order: list[Any] = []
    recording(aq, order, events())
    q = aq.queue()
    async with aq:
        await q.pause_tag("A")
        a = await q.add_bulk(task("A", f"A{i}") for i in range(3))
        b = await q.add_bulk(task("B", f"B{i}") for i in range(3))
        await all_settled(q, [j.id for j in b])

        async def a_waits() -> bool:
            got = [await q.get_job(j.id) for j in a]
            return all(j is not None and j.status is JobStatus.PENDING for j in got)

        await holds(a_waits, for_s=WINDOW_S, what="paused tag A: its tasks wait")
        assert order == ["B0", "B1", "B2"]
        await q.resume_tag("A")
        await all_settled(q, [j.id for j in a], timeout_s=10)
    assert order == ["B0", "B1", "B2", "A0", "A1", "A2"]


async def test_pausing_a_running_tag_lets_its_running_job_finish(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=1))
    order: list[Any] = []
    blocker = events()
    recording(aq, order, blocker)
    q = aq.queue()
    async with aq:
        running = await q.add(task("A", "blocker"))
        await asyncio.wait_for(blocker["running"].wait(), 10)
        later = await q.add(task("A", "later"))
        await q.pause_tag("A")
        blocker["let_go"].set()
        assert (await settled(q, running.id)).status is JobStatus.COMPLETED
        other = await q.add(task("B", "other"))
        await settled(q, other.id)

        async def later_waits() -> bool:
            got = await q.get_job(later.id)
            return got is not None and got.status is JobStatus.PENDING

        await holds(later_waits, for_s=WINDOW_S, what="paused tag A: later waits")
        await q.resume_tag("A")
        await settled(q, later.id)
    assert order == ["blocker", "other", "later"]


async def test_pause_is_shared_by_every_node(make_settings) -> None:
    """Pausing through a node that runs nothing (a producer) pauses the workers elsewhere."""
    settings = make_settings(worker_count=2)
    workers = AffinityQueue(settings)
    order: list[Any] = []
    recording(workers, order, events())
    producer = AffinityQueue(settings)
    try:
        q = producer.queue()
        await q.pause()
        await q.pause_tag("B")
        async with workers:
            jobs = await q.add_bulk([task("A", "a"), task("B", "b")])

            async def none_ran() -> bool:
                return not order

            await holds(none_ran, for_s=WINDOW_S, what="paused by another node")
            await q.resume()
            await settled(q, jobs[0].id)
            assert order == ["a"], "tag B is still paused on its own"
            await q.resume_tag("B")
            await settled(q, jobs[1].id)
            await q.resume()  # resuming what is not paused changes nothing
            await q.resume_tag("B")
            assert (await settled(q, (await q.add(task("B", "c"))).id)).result == "c"
    finally:
        await producer.aclose()
    assert order == ["a", "b", "c"]


async def test_a_delayed_task_of_a_paused_tag_waits_after_it_is_due(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    order: list[Any] = []
    recording(aq, order, events())
    q = aq.queue()
    async with aq:
        await q.pause_tag("T")
        job = await q.add(task("T", "d"), delay_s=0.2)
        # Due after 0.2 s: it leaves the delayed state but must not run.
        got = await job_reaches(q, job.id, {JobStatus.PENDING, *TERMINAL}, timeout_s=5)
        assert got.status is JobStatus.PENDING, got

        async def still_pending() -> bool:
            j = await q.get_job(job.id)
            return j is not None and j.status is JobStatus.PENDING

        await holds(still_pending, for_s=WINDOW_S, what="due, but its tag is paused")
        await q.resume_tag("T")
        assert (await settled(q, job.id)).status is JobStatus.COMPLETED
    assert order == ["d"]
