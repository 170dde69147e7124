"""Scheduling rules on small, deterministic workloads: head-of-line, batches, fairness, per-tag
concurrency, tags of any shape, release of workers, statistics and bulk adds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus
from affinity_queue.keys import tag_from_id
from affinity_queue.queue import BULK_CHUNK

from .support import Run, drained, order_of, overlaps, queue_keys, streaks, wait_for


def recording(aq: AffinityQueue, runs: list[Run], type_: str = "t", sleep_s: float = 0.0) -> None:
    """Register an async handler for ``type_`` that appends a :class:`Run` to ``runs``."""

    @aq.handler(type_)
    async def handle(payload: Any, ctx: JobContext) -> Any:
        start = time.monotonic()
        await asyncio.sleep(sleep_s)
        runs.append(
            Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, time.monotonic())
        )
        return payload


def task(tag: str, payload: Any = None, type_: str = "t") -> dict[str, Any]:
    return {"type": type_, "identifyTag": tag, "payload": payload}


async def test_a_busy_tag_does_not_block_the_tags_behind_it(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=10))
    a_finished = 0
    a_finished_when_b_started: list[int] = []
    b_started = asyncio.Event()

    @aq.handler("a")
    async def run_a(payload: int) -> None:
        nonlocal a_finished
        await asyncio.sleep(0.005)
        a_finished += 1

    @aq.handler("b")
    async def run_b(payload: None) -> None:
        a_finished_when_b_started.append(a_finished)
        b_started.set()

    await aq.queue().add_bulk(task("A", i, "a") for i in range(1000))
    await aq.queue().add(task("B", None, "b"))
    async with aq:
        await asyncio.wait_for(b_started.wait(), 10)
    assert a_finished_when_b_started[0] < 10, (
        f"B waited behind A: it started after {a_finished_when_b_started[0]} of A's tasks"
    )


async def test_a_tag_runs_in_batches_on_one_worker_at_a_time(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=3, max_batch_size=10))
    runs: list[Run] = []
    recording(aq, runs, sleep_s=0.003)
    await aq.queue().add_bulk(task("T", i) for i in range(25))
    async with aq:
        await drained(aq.queue(), 25)
    assert [r.payload for r in sorted(runs, key=lambda r: r.start)] == list(range(25))
    assert [length for _, length in streaks(runs)] == [10, 10, 5], streaks(runs)
    assert overlaps(runs) == 1, "the tag ran on two workers at once"


async def test_a_bound_tag_keeps_its_worker_and_waits_when_its_batch_is_full(
    make_settings,
) -> None:
    aq = AffinityQueue(make_settings(worker_count=3, max_batch_size=3))
    runs: list[Run] = []
    first_running = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: int, ctx: JobContext) -> None:
        start = time.monotonic()
        if payload == 0:
            first_running.set()
            await asyncio.wait_for(let_go.wait(), 10)
        runs.append(Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, start))

    q = aq.queue()
    async with aq:
        await q.add(task("T", 0))
        await asyncio.wait_for(first_running.wait(), 10)
        # Arriving while T's worker runs: two fill its batch, the third must wait although two
        # other workers are idle.
        later = await q.add_bulk(task("T", i) for i in (1, 2, 3))
        stats = await wait_for(
            q.get_queue_stats,
            lambda s: (s.pending, s.assigned, s.active) == (1, 2, 1),
            what="two placed, one waiting",
        )
        (bound,) = [w for w in stats.workers if w.status == "running"]
        assert (bound.current_identify_tag, bound.current_batch_size) == ("T", 3)
        assert bound.queue_length == 2
        assert sum(w.status == "idle" for w in stats.workers) == 2
        placed = [await q.get_job(j.id) for j in later]
        assert [j.status for j in placed] == [  # type: ignore[union-attr]
            JobStatus.ASSIGNED,
            JobStatus.ASSIGNED,
            JobStatus.PENDING,
        ]
        assert {j.worker_id for j in placed[:2]} == {bound.worker_id}  # type: ignore[union-attr]
        let_go.set()
        await drained(q, 4)
    assert [r.payload for r in sorted(runs, key=lambda r: r.start)] == [0, 1, 2, 3]
    assert [(w, n) for w, n in streaks(runs)] == [(bound.worker_id, 3), (runs[-1].worker, 1)]
    assert runs[-1].worker != bound.worker_id, "the full batch was not released to another worker"


async def test_cold_tags_are_not_starved_by_a_hot_one(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=3, max_batch_size=5))
    runs: list[Run] = []
    recording(aq, runs, sleep_s=0.002)
    cold = [f"cold-{i}" for i in range(6)]
    await aq.queue().add_bulk(task("hot", i) for i in range(300))
    await aq.queue().add_bulk(task(tag, i) for i in range(3) for tag in cold)
    async with aq:
        await drained(aq.queue(), 300 + 3 * len(cold))
    hot_done = max(r.end for r in runs if r.tag == "hot")
    first_start = {tag: min(r.start for r in runs if r.tag == tag) for tag in cold}
    starved = [tag for tag, start in first_start.items() if start >= hot_done]
    assert not starved, f"cold tags {starved} only started after the hot tag finished"


async def test_tags_take_turns_a_batch_at_a_time(make_settings) -> None:
    """A tag that gave up its worker with work left queues behind the tags already waiting:
    with one worker, a flood added first still lets later tags in after each batch."""
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=5))
    runs: list[Run] = []
    recording(aq, runs)
    await aq.queue().add_bulk(task("hot", i) for i in range(20))
    await aq.queue().add_bulk(task(tag, 0) for tag in ("b", "c", "d"))
    async with aq:
        await drained(aq.queue(), 23)
    runs.sort(key=lambda r: r.start)
    order = [r.tag if r.tag != "hot" else f"hot{r.payload}" for r in runs]
    assert order == [*(f"hot{i}" for i in range(5)), "b", "c", "d"] + [
        f"hot{i}" for i in range(5, 20)
    ]


async def test_per_tag_concurrency_limit_is_reached_and_never_exceeded(make_settings) -> None:
    aq = AffinityQueue(
        make_settings(
            worker_count=4,
            max_batch_size=5,
            identify_tag_concurrency={"default": 1, "limits": {"wide": 2}},
        )
    )
    runs: list[Run] = []
    active: dict[str, int] = defaultdict(int)
    two_at_once = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: int, ctx: JobContext) -> None:
        start = time.monotonic()
        active[ctx.identify_tag] += 1
        if active["wide"] >= 2:
            two_at_once.set()
        if ctx.identify_tag == "wide" and payload < 5:
            # The first batch waits until a second worker runs the tag (or a deadline passes).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(two_at_once.wait(), 5)
        await asyncio.sleep(0.002)
        active[ctx.identify_tag] -= 1
        runs.append(
            Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, time.monotonic())
        )

    await aq.queue().add_bulk(task(tag, i) for i in range(30) for tag in ("wide", "narrow"))
    async with aq:
        await drained(aq.queue(), 60)
    wide = [r for r in runs if r.tag == "wide"]
    narrow = [r for r in runs if r.tag == "narrow"]
    assert overlaps(wide) == 2, "the tag with limit 2 did not run on exactly 2 workers at its peak"
    assert len({r.worker for r in wide}) >= 2
    assert overlaps(narrow) == 1, "a tag with limit 1 ran on two workers at once"
    narrow_order = [r.payload for r in sorted(narrow, key=lambda r: r.start)]
    assert narrow_order == list(range(30))


SPECIAL_TAGS = [
    "a:b",
    "a",
    "a:",
    ":a",
    "{x}",
    "{",
    "}",
    "*",
    "?",
    "[ab]",
    "a*",
    "\\",
    "with space",
    "line\nbreak",
    "tab\there",
    "emoji 🙂🚀",
    "ünïcödé",
    "x" * 1024,
    "pre",
    "prefix",
    "prefix:more",
    "0",
    "00",
    "61",  # the hex spelling of "a"
]


async def test_tags_of_any_shape_round_trip_and_never_collide(make_settings, redis_client) -> None:
    settings = make_settings(worker_count=3, max_batch_size=2)
    aq = AffinityQueue(settings)
    runs: list[Run] = []
    recording(aq, runs)
    assert len(set(SPECIAL_TAGS)) == len(SPECIAL_TAGS)
    jobs = await aq.queue().add_bulk(
        task(tag, {"tag": tag, "seq": i}) for i in range(3) for tag in SPECIAL_TAGS
    )
    keys = settings.keys
    tag_keys = {
        k for k in await queue_keys(redis_client, settings) if k.startswith(keys.tag_prefix)
    }
    assert {tag_from_id(k.removeprefix(keys.tag_prefix)) for k in tag_keys} == set(SPECIAL_TAGS)
    for tag in SPECIAL_TAGS:
        assert await redis_client.llen(keys.tag_queue(tag)) == 3, repr(tag)

    async with aq:
        await drained(aq.queue(), len(jobs))
        stored = [await aq.queue().get_job(job.id) for job in jobs]
    for job, got in zip(jobs, stored, strict=True):
        assert got is not None
        assert got.identify_tag == job.identify_tag == job.payload["tag"]  # type: ignore[index]
        assert got.status is JobStatus.COMPLETED
    assert len(runs) == len(jobs)
    for r in runs:
        assert r.tag == r.payload["tag"], f"ctx.identify_tag {r.tag!r} != {r.payload['tag']!r}"
    by_tag: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.start):
        by_tag[r.tag].append(r)
    assert set(by_tag) == set(SPECIAL_TAGS)
    for tag, group in by_tag.items():
        assert [r.payload["seq"] for r in group] == [0, 1, 2], repr(tag)
        assert overlaps(group) == 1, repr(tag)


async def test_every_worker_is_released_after_draining(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=4, max_batch_size=3))
    runs: list[Run] = []
    recording(aq, runs, sleep_s=0.001)
    async with aq:
        await aq.queue().add_bulk(task(f"tag-{i % 7}", i) for i in range(100))
        stats = await drained(aq.queue(), 100)
        # Finishing the last job and releasing the tag are one atomic step: no wait needed.
        assert len(stats.workers) == 4
        for w in stats.workers:
            assert (w.status, w.current_identify_tag, w.current_batch_size) == ("idle", None, 0), w
            assert w.queue_length == 0 and w.active_job_id is None, w
        assert (stats.pending, stats.assigned, stats.active) == (0, 0, 0)
        assert stats.completed == 100 and stats.failed == 0


async def test_stats_count_jobs_before_during_and_after(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=10))
    first_started = asyncio.Event()
    let_go = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: int) -> None:
        if payload == 0:
            first_started.set()
            await asyncio.wait_for(let_go.wait(), 10)
        if payload % 4 == 3:
            raise RuntimeError("planned failure")

    q = aq.queue()
    await q.add_bulk(task("T", i) for i in range(15))
    before = await q.get_queue_stats()
    assert (before.pending, before.assigned, before.active) == (15, 0, 0)
    assert (before.completed, before.failed) == (0, 0)
    assert before.workers == [] and before.leader is None
    async with aq:
        await asyncio.wait_for(first_started.wait(), 10)
        during = await q.get_queue_stats()
        # One batch of 10 went to the only worker; it runs the first and holds nine.
        assert (during.pending, during.assigned, during.active) == (5, 9, 1), during
        assert (during.completed, during.failed) == (0, 0)
        (worker,) = during.workers
        assert worker.status == "running" and worker.current_identify_tag == "T"
        assert worker.current_batch_size == 10 and worker.queue_length == 9
        assert during.leader is not None
        let_go.set()
        after = await drained(q, 15)
    failed = sum(1 for i in range(15) if i % 4 == 3)
    assert (after.pending, after.assigned, after.active) == (0, 0, 0)
    assert (after.completed, after.failed) == (15 - failed, failed)


async def test_add_bulk_keeps_order_and_ids_across_chunks(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=50))
    runs: list[Run] = []
    recording(aq, runs)
    n = 2 * BULK_CHUNK + 500
    tasks = [task(f"tag-{i % 3}", i) for i in range(n)]
    jobs = await aq.queue().add_bulk(tasks)
    assert [j.payload for j in jobs] == list(range(n))
    assert [j.identify_tag for j in jobs] == [t["identifyTag"] for t in tasks]
    ids = [order_of(j.id) for j in jobs]
    assert ids == list(range(ids[0], ids[0] + n)), "ids are not consecutive in add order"
    assert len({j.id for j in jobs}) == n
    assert all(j.status is JobStatus.PENDING for j in jobs)
    for j in (jobs[0], jobs[BULK_CHUNK - 1], jobs[BULK_CHUNK], jobs[-1]):
        got = await aq.queue().get_job(j.id)
        assert got is not None
        assert (got.payload, got.identify_tag, got.type) == (j.payload, j.identify_tag, "t")
    assert await aq.queue().add_bulk([]) == []
    async with aq:
        await drained(aq.queue(), n, timeout_s=60)
    assert sorted(r.job_id for r in runs) == sorted(j.id for j in jobs)
    for tag in ("tag-0", "tag-1", "tag-2"):
        order = [r.payload for r in sorted(runs, key=lambda r: r.start) if r.tag == tag]
        assert order == sorted(order), f"{tag} ran out of add order across chunk boundaries"
