"""Prometheus metrics: a scrape of a running app agrees with the work it did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from affinity_queue import AffinityQueue, JobContext, QueueSettings, Task
from affinity_queue.observability.metrics import OTHER_TAG, metrics_app

from ..support import drained, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` that has ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def app_for(aq: AffinityQueue, **options: Any) -> tuple[FastAPI, httpx.AsyncClient]:
    app = FastAPI()
    app.mount("/metrics", metrics_app(aq, **options))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return app, client


async def test_a_scrape_counts_the_work_done(make_settings: Callable[..., QueueSettings]) -> None:
    aq = AffinityQueue(make_settings(worker_count=3, max_batch_size=4))
    failing = {3, 10, 22, 41, 57, 77, 99}

    @aq.handler("work")
    async def work(payload: int, ctx: JobContext) -> int:
        if payload in failing:
            raise ValueError(f"task {payload} fails")
        return payload

    _, client = app_for(aq)
    async with aq, client:
        q = aq.queue()
        await q.add_bulk(
            [Task(type="work", identify_tag=f"t{i % 9}", payload=i) for i in range(100)]
        )
        await drained(q, 100)
        # Wait times are read after the start, in bulk: let the last read land.
        samples = await wait_for(
            lambda: scrape(client),
            lambda s: (
                value(s, "affinity_queue_task_wait_seconds_count", queue="default", type="work")
                == 100
            ),
            what="100 wait observations",
        )
    q_ = {"queue": "default"}
    assert value(samples, "affinity_queue_tasks_enqueued_total", **q_, type="work") == 100
    finished = "affinity_queue_tasks_finished_total"
    assert value(samples, finished, **q_, type="work", outcome="completed") == 93
    assert value(samples, finished, **q_, type="work", outcome="failed") == 7
    assert value(samples, "affinity_queue_task_retries_total", **q_, type="work") == 0
    assert value(samples, "affinity_queue_task_duration_seconds_count", **q_, type="work") == 100
    assert value(samples, "affinity_queue_tasks", **q_, state="completed") == 93
    assert value(samples, "affinity_queue_tasks", **q_, state="failed") == 7
    assert value(samples, "affinity_queue_tasks", **q_, state="pending") == 0
    assert value(samples, "affinity_queue_workers", **q_, status="idle") == 3
    assert value(samples, "affinity_queue_leader", **q_) == 1
    assert value(samples, "affinity_queue_leader_changes_total", **q_) == 1
    # 9 tags over batches of 4: every tag was released at least once, some for a full batch.
    assert total(samples, "affinity_queue_tag_handovers_total", **q_) >= 9
    assert value(samples, "affinity_queue_tag_handovers_total", **q_, reason="batch_full") >= 1
    # Wait = from enqueue to start, so never negative and under the test's duration.
    assert value(samples, "affinity_queue_task_wait_seconds_sum", **q_, type="work") < 100 * 30


async def test_retries_are_counted_apart(make_settings: Callable[..., QueueSettings]) -> None:
    aq = AffinityQueue(make_settings(max_attempts=3, retry_backoff_ms=1))
    runs: dict[int, int] = {}

    @aq.handler("flaky")
    async def flaky(payload: int) -> None:
        runs[payload] = runs.get(payload, 0) + 1
        if runs[payload] < 3:
            raise RuntimeError("not yet")

    _, client = app_for(aq)
    async with aq, client:
        await aq.queue().add_bulk(
            [Task(type="flaky", identify_tag="a", payload=i) for i in range(4)]
        )
        await drained(aq.queue(), 4)
        samples = await scrape(client)
    labels = {"queue": "default", "type": "flaky"}
    assert value(samples, "affinity_queue_task_retries_total", **labels) == 8
    assert value(samples, "affinity_queue_tasks_finished_total", **labels, outcome="completed") == 4
    assert value(samples, "affinity_queue_task_duration_seconds_count", **labels) == 12


async def test_per_tag_series_stay_bounded(make_settings: Callable[..., QueueSettings]) -> None:
    """30 tags waiting, top 5: the backlog of the five busiest and the oldest wait of the five
    longest-waiting have series of their own, and __other__ the rest; the series count does
    not grow with the tags."""
    aq = AffinityQueue(make_settings(app_role="SCHEDULER"))  # nobody runs them: they wait
    _, client = app_for(aq, top_tags=5)
    async with aq, client:
        q = aq.queue()
        for i in range(30):
            await q.add_bulk(
                [Task(type="x", identify_tag=f"tenant-{i}", payload=j) for j in range(i + 1)]
            )
        samples = await scrape(client)
    backlog = {
        dict(ls)["tag"]: v for (n, ls), v in samples.items() if n == "affinity_queue_tag_backlog"
    }
    waits = {
        dict(ls)["tag"]: v
        for (n, ls), v in samples.items()
        if n == "affinity_queue_tag_oldest_wait_seconds"
    }
    oldest = [f"tenant-{i}" for i in range(5)]  # added first: their heads are the oldest
    busiest = [f"tenant-{i}" for i in range(29, 24, -1)]  # tenant-i has i + 1 jobs
    assert set(backlog) == {*busiest, OTHER_TAG} and set(waits) == {*oldest, OTHER_TAG}
    assert [backlog[t] for t in busiest] == [30, 29, 28, 27, 26]
    assert backlog[OTHER_TAG] == sum(range(1, 31)) - sum(range(26, 31))
    assert all(w >= 0 for w in waits.values())
    assert waits["tenant-0"] >= waits["tenant-4"] >= waits[OTHER_TAG]
    assert value(samples, "affinity_queue_tags_ready", queue="default") == 30
    assert value(samples, "affinity_queue_tags_bound", queue="default") == 0


async def test_an_unreachable_redis_does_not_fail_the_scrape(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_ms=200))
    _, client = app_for(aq)
    async with client:
        samples = await scrape(client)
    assert value(samples, "affinity_queue_leader", queue="default") == 0
    assert not [n for n, _ in samples if n == "affinity_queue_tasks"]
    await aq.aclose()
