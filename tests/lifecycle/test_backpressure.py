"""Per-tag backpressure: ``add`` over MAX_PENDING_PER_TAG pending (not yet started) tasks raises
``TagBacklogFullError`` and writes nothing; the example app answers 429."""

from __future__ import annotations

import asyncio

import pytest

from affinity_queue import AffinityQueue, JobStatus, TagBacklogFullError

from ..app_support import env_for, load_example, serve
from ..support import snapshot
from .support import all_settled, job_reaches, settled, task


async def test_a_full_tag_refuses_new_tasks_and_writes_nothing(make_settings, redis_client) -> None:
    settings = make_settings(max_pending_per_tag=3)
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        await q.add_bulk(task("A", i) for i in range(3))
        before = await snapshot(redis_client, settings)
        with pytest.raises(TagBacklogFullError) as caught:
            await q.add(task("A", 3))
        assert (caught.value.identify_tag, caught.value.limit) == ("A", 3)
        assert "A" in str(caught.value) and "3" in str(caught.value)
        with pytest.raises(TagBacklogFullError):
            await q.add_bulk([task("A", 4)])
        assert await snapshot(redis_client, settings) == before, "a refused add wrote something"
        other = await q.add(task("B", 0))  # other tags are not affected
        assert other.status is JobStatus.PENDING
        stats = await q.get_queue_stats()
        assert stats.pending == 4
    finally:
        await aq.aclose()


async def test_a_bulk_add_that_would_overflow_a_tag_writes_nothing(
    make_settings, redis_client
) -> None:
    settings = make_settings(max_pending_per_tag=3)
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        await q.add_bulk([task("A", 0), task("A", 1)])
        before = await snapshot(redis_client, settings)
        with pytest.raises(TagBacklogFullError) as caught:
            await q.add_bulk([task("B", 0), task("A", 2), task("A", 3)])
        assert caught.value.identify_tag == "A"
        assert await snapshot(redis_client, settings) == before, "a refused bulk add wrote"
        assert (await q.get_queue_stats()).pending == 2
    finally:
        await aq.aclose()


async def test_only_tasks_not_yet_started_count(make_settings) -> None:
    # Batches of ten: the tasks behind the running one are assigned to its worker, not
    # started, so they still count.
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=10, max_pending_per_tag=2))
    running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: int) -> int:
        if payload == 0:
            running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        return payload

    q = aq.queue()
    async with aq:
        first = await q.add(task("A", 0))
        await asyncio.wait_for(running.wait(), 10)
        queued = [await q.add(task("A", i)) for i in (1, 2)]  # the running one is not counted
        for j in queued:
            await job_reaches(q, j.id, {JobStatus.ASSIGNED, JobStatus.PENDING})
        with pytest.raises(TagBacklogFullError):
            await q.add(task("A", 3))
        let_go.set()
        await all_settled(q, [first.id, *(j.id for j in queued)])
        # Drained: room again.
        assert (await settled(q, (await q.add(task("A", 4))).id)).result == 4


async def test_a_duplicate_of_an_admitted_task_is_not_refused(make_settings) -> None:
    """Deduplication comes first: a retried add of a task already admitted returns its job,
    although the tag is full (it would add nothing)."""
    aq = AffinityQueue(make_settings(max_pending_per_tag=1))
    q = aq.queue()
    try:
        job = await q.add(task("A", 0), dedupe_key="once", dedupe_ttl_s=30)
        again = await q.add(task("A", 0), dedupe_key="once", dedupe_ttl_s=30)
        assert again.id == job.id
    finally:
        await aq.aclose()


async def test_the_example_app_answers_429_when_a_tag_is_full(monkeypatch, make_settings) -> None:
    # A scheduler only: no worker takes the tasks, so the tag fills up.
    settings = make_settings(app_role="SCHEDULER", max_pending_per_tag=2)
    example = load_example(monkeypatch, env_for(settings))
    async with serve(example.app) as http:
        body = {"type": "send-email", "identifyTag": "company-1", "payload": None}
        for _ in range(2):
            response = await http.post("/tasks", json=body)
            assert response.status_code == 202, response.text
        response = await http.post("/tasks", json=body)
        assert response.status_code == 429, response.text
        assert "company-1" in response.json()["message"]
        response = await http.post("/tasks/batch", params={"count": 3, "companies": 1})
        assert response.status_code == 429, response.text
        other = {**body, "identifyTag": "company-2"}
        assert (await http.post("/tasks", json=other)).status_code == 202
        stats = (await http.get("/queue/stats")).json()
        assert stats["pending"] == 3, stats
