"""The scheduling invariants, checked on a large randomized workload.

Two ``AffinityQueue`` instances (two would-be leaders, four workers each) share one queue. Every
handler execution is recorded in a plain list, outside Redis, and the invariants are checked on
that record: each task ran exactly once; a tag never runs on two workers at once (or at most its
limit); a tag's tasks start in the order they were added; a worker runs at most MAX_BATCH_SIZE
tasks of one tag per binding, and of no other tag meanwhile.

The workload is drawn from a seeded generator. Set ``AQ_TEST_SEED`` to replay a failure; the seed
is printed and is part of every assertion message.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from affinity_queue import (
    AffinityQueue,
    JobContext,
    QueueService,
    QueueSettings,
    QueueStats,
    WorkerService,
)

from .support import overlaps

N_TASKS = 5_000
N_TAGS = 300
MAX_BATCH = 5
WORKERS_PER_INSTANCE = 4
DEADLINE_S = 90.0


@dataclass(frozen=True, slots=True)
class Run:
    job_id: str
    tag: str
    seq: int
    worker: str
    attempt: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Release:
    worker: str


@dataclass(frozen=True, slots=True)
class Spec:
    type: str
    tag: str
    seq: int
    sleep_s: float

    def as_task(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "identifyTag": self.tag,
            "payload": {"seq": self.seq, "sleep_s": self.sleep_s},
        }


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("AQ_TEST_SEED") or random.randrange(2**32))
    print(f"AQ_TEST_SEED={value}")
    return value


def workload(rng: random.Random) -> list[Spec]:
    """Tags with Zipf-like sizes (a few hot, many cold); handlers of 0-3 ms, one in five sync."""
    weights = [1 / (rank + 1) ** 1.1 for rank in range(N_TAGS)]
    tags = rng.choices([f"tag-{i}" for i in range(N_TAGS)], weights, k=N_TASKS)
    seqs: dict[str, itertools.count[int]] = defaultdict(itertools.count)
    return [
        Spec(
            "sync" if rng.random() < 0.2 else "async",
            tag,
            next(seqs[tag]),
            rng.choice([0.0, rng.uniform(0, 0.003)]),
        )
        for tag in tags
    ]


def register_recording_handlers(aq: AffinityQueue, runs: list[Run | Release]) -> None:
    def record(payload: dict[str, Any], ctx: JobContext, start: float) -> None:
        runs.append(
            Run(
                ctx.job_id,
                ctx.identify_tag,
                payload["seq"],
                ctx.worker_id,
                ctx.attempt,
                start,
                time.monotonic(),
            )
        )

    @aq.handler("async")
    async def run_async(payload: dict[str, Any], ctx: JobContext) -> int:
        start = time.monotonic()
        await asyncio.sleep(payload["sleep_s"])
        record(payload, ctx, start)
        return int(payload["seq"])

    @aq.handler("sync")
    def run_sync(payload: dict[str, Any], ctx: JobContext) -> int:
        start = time.monotonic()
        time.sleep(payload["sleep_s"])
        record(payload, ctx, start)  # list.append is atomic: safe from the worker thread
        return int(payload["seq"])


async def enqueue(queue: QueueService, specs: list[Spec], rng: random.Random) -> list[str]:
    """Add while the workers run: chunks of random size via add_bulk, some one by one."""
    ids: list[str] = []
    i = 0
    while i < len(specs):
        size = rng.choice([1, 1, 7, 50, 400])
        chunk = specs[i : i + size]
        if size == 1:
            ids.append((await queue.add(chunk[0].as_task())).id)
        else:
            ids.extend(j.id for j in await queue.add_bulk(s.as_task() for s in chunk))
        i += size
        await asyncio.sleep(0)  # let the workers interleave with the producer
    return ids


def record_releases(monkeypatch: pytest.MonkeyPatch, events: list[Run | Release]) -> None:
    """Note when a worker's ``advance`` comes back empty-handed (its queue is empty, so it holds
    no tag: it released one, or had none), and when the worker sees a new binding begin in what
    ``advance`` gave it (the script bound it again at once: another tag, or the same tag after
    a full batch). The runs between two such notes are one binding."""
    advance, release = WorkerService._advance, WorkerService._release

    async def noting(self: WorkerService, slot: int, wid: str, *args: Any) -> Any:
        run = await advance(self, slot, wid, *args)
        if not run:
            events.append(Release(wid))
        return run

    async def released(self: WorkerService, slot: int, wid: str, reason: str) -> None:
        events.append(Release(wid))
        await release(self, slot, wid, reason)

    monkeypatch.setattr(WorkerService, "_advance", noting)
    monkeypatch.setattr(WorkerService, "_release", released)


async def run_workload(
    settings: QueueSettings,
    specs: list[Spec],
    rng: random.Random,
    redis: Redis,
    events: list[Run | Release],
    ctx: str,
) -> tuple[list[str], list[str | None]]:
    """Run the workload on two nodes; returns the job ids (in add order) and their statuses."""
    nodes = [AffinityQueue(settings), AffinityQueue(settings)]
    for aq in nodes:
        register_recording_handlers(aq, events)
    producer = nodes[0].queue()
    try:
        half = len(specs) // 2
        ids = [j.id for j in await producer.add_bulk(s.as_task() for s in specs[:half])]
        for aq in nodes:
            await aq.start()
        ids += await enqueue(producer, specs[half:], rng)
        stats = await wait_until_finished(producer, len(specs), ctx)
        leaders = [aq.scheduler().node_id for aq in nodes if aq.scheduler().is_leader]
        assert len(leaders) == 1, f"{ctx}: {len(leaders)} nodes think they lead"
        assert stats.leader is not None and stats.leader.node_id == leaders[0], ctx
    finally:
        for aq in nodes:
            await aq.aclose()
    keys = settings.keys
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        statuses = list(await pipe.execute())
    return ids, statuses


async def wait_until_finished(queue: QueueService, total: int, ctx: str) -> QueueStats:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        stats = await queue.get_queue_stats()
        if stats.completed + stats.failed >= total:
            return stats
        assert time.monotonic() < deadline, f"{ctx}: not finished in {DEADLINE_S} s: {stats}"
        await asyncio.sleep(0.05)


# -- the invariants, on the record ---------------------------------------------------------------
def check_exactly_once(runs: list[Run], specs: list[Spec], ids: list[str], ctx: str) -> None:
    assert len(ids) == len(set(ids)) == len(specs), f"{ctx}: job ids are not unique"
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[r.job_id] += 1
    twice = {j: n for j, n in counts.items() if n > 1}
    assert not twice, f"{ctx}: jobs ran more than once: {dict(itertools.islice(twice.items(), 10))}"
    missing = set(ids) - set(counts)
    assert not missing, f"{ctx}: {len(missing)} jobs never ran, e.g. {sorted(missing)[:10]}"
    assert set(counts) == set(ids), f"{ctx}: unknown job ids ran"
    by_id = dict(zip(ids, specs, strict=True))
    wrong = [r for r in runs if (by_id[r.job_id].tag, by_id[r.job_id].seq) != (r.tag, r.seq)]
    assert not wrong, f"{ctx}: jobs ran with another task's tag or payload: {wrong[:5]}"
    assert all(r.attempt == 1 for r in runs), f"{ctx}: a job ran with attempt != 1"


def by_tag(runs: list[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        grouped[r.tag].append(r)
    for group in grouped.values():
        group.sort(key=lambda r: r.start)
    return grouped


def check_exclusive_and_ordered(runs: list[Run], tags: Callable[[str], bool], ctx: str) -> None:
    for tag, group in by_tag(runs).items():
        if not tags(tag):
            continue
        for prev, nxt in itertools.pairwise(group):
            assert prev.end <= nxt.start, (
                f"{ctx}: tag {tag!r} ran twice at once: job {prev.job_id} on {prev.worker} "
                f"[{prev.start:.6f}, {prev.end:.6f}] and job {nxt.job_id} on {nxt.worker} "
                f"[{nxt.start:.6f}, {nxt.end:.6f}]"
            )
        seqs = [r.seq for r in group]
        assert seqs == sorted(seqs), f"{ctx}: tag {tag!r} started out of order: {seqs[:50]}"


def check_batch_bound(events: list[Run | Release], ctx: str) -> int:
    """A binding (the runs of one worker between two releases) holds one tag, at most
    MAX_BATCH_SIZE times. Returns how many times a worker took the same tag again right after
    releasing it (allowed: the rule binds *an* idle worker, which may be the one just released)."""
    per_worker: dict[str, list[Run | Release]] = defaultdict(list)
    for e in events:
        per_worker[e.worker].append(e)  # appended by the worker's own coroutine: its own order
    rebound = 0
    for worker, own in per_worker.items():
        bindings = [
            list(group)
            for is_run, group in itertools.groupby(own, key=lambda e: isinstance(e, Run))
            if is_run
        ]
        for binding in bindings:
            tags = {r.tag for r in binding if isinstance(r, Run)}
            assert len(tags) == 1, f"{ctx}: worker {worker} ran tags {tags} in one binding"
            assert len(binding) <= MAX_BATCH, (
                f"{ctx}: worker {worker} ran {len(binding)} tasks of tag {tags.pop()!r} in one "
                f"binding (MAX_BATCH_SIZE={MAX_BATCH})"
            )
        for prev, nxt in itertools.pairwise(bindings):
            rebound += prev[0].tag == nxt[0].tag  # type: ignore[union-attr]
    return rebound


def settings_for(make_settings: Callable[..., QueueSettings], **extra: Any) -> QueueSettings:
    return make_settings(
        worker_count=WORKERS_PER_INSTANCE,
        max_batch_size=MAX_BATCH,
        app_role="BOTH",
        # Generous leases: a 2-core machine under load must not look like a dead worker here.
        heartbeat_timeout_ms=20_000,
        election_lock_ttl_ms=20_000,
        **extra,
    )


async def test_invariants_hold_on_a_random_workload(
    make_settings, redis_client, monkeypatch, seed: int
) -> None:
    rng = random.Random(seed)
    ctx = f"AQ_TEST_SEED={seed}"
    specs = workload(rng)
    events: list[Run | Release] = []
    record_releases(monkeypatch, events)
    settings = settings_for(make_settings)
    ids, statuses = await run_workload(settings, specs, rng, redis_client, events, ctx)
    runs = [e for e in events if isinstance(e, Run)]
    check_exactly_once(runs, specs, ids, ctx)
    assert statuses == ["completed"] * N_TASKS, f"{ctx}: statuses {Counter(statuses)}"
    check_exclusive_and_ordered(runs, lambda _: True, ctx)
    rebound = check_batch_bound(events, ctx)
    print(f"{ctx}: {rebound} times a worker took the tag it had just released")
    assert len({r.worker for r in runs}) == 2 * WORKERS_PER_INSTANCE, (
        f"{ctx}: not every worker of both instances took part"
    )


@pytest.mark.xfail(
    strict=True,
    reason="by design: a worker that has run a full batch of a tag starts a new batch of it when "
    "no other tag is placeable (the batch rule, README), so a lone tag runs on",
)
async def test_no_worker_runs_more_than_a_batch_of_one_tag_in_a_row(
    make_settings, redis_client, seed: int
) -> None:
    """The stricter reading of the batch bound: counted in each worker's own execution order,
    across releases. Flips to XPASS if the scheduler starts avoiding such re-binds."""
    rng = random.Random(seed)
    ctx = f"AQ_TEST_SEED={seed}"
    events: list[Run | Release] = []
    settings = settings_for(make_settings)
    await run_workload(settings, workload(rng), rng, redis_client, events, ctx)
    per_worker: dict[str, list[Run]] = defaultdict(list)
    for e in events:
        if isinstance(e, Run):
            per_worker[e.worker].append(e)
    for worker, own in per_worker.items():
        for tag, streak in itertools.groupby(own, key=lambda r: r.tag):
            length = len(list(streak))
            assert length <= MAX_BATCH, f"{ctx}: {worker} ran {length} of {tag!r} in a row"


async def test_invariants_hold_with_per_tag_concurrency(
    make_settings, redis_client, monkeypatch, seed: int
) -> None:
    rng = random.Random(seed)
    ctx = f"AQ_TEST_SEED={seed}"
    specs = workload(rng)
    events: list[Run | Release] = []
    record_releases(monkeypatch, events)
    # The hottest tags and a few cold ones may run on 3 workers at once; the others on one.
    wide = {"tag-0", "tag-1", "tag-2", *rng.sample([f"tag-{i}" for i in range(50, N_TAGS)], 5)}
    settings = settings_for(
        make_settings, identify_tag_concurrency={"default": 1, "limits": dict.fromkeys(wide, 3)}
    )
    ids, statuses = await run_workload(settings, specs, rng, redis_client, events, ctx)
    runs = [e for e in events if isinstance(e, Run)]
    check_exactly_once(runs, specs, ids, ctx)
    assert statuses == ["completed"] * N_TASKS, f"{ctx}: statuses {Counter(statuses)}"
    check_exclusive_and_ordered(runs, lambda tag: tag not in wide, ctx)
    check_batch_bound(events, ctx)
    grouped = by_tag(runs)
    peaks = {tag: overlaps(grouped.get(tag, [])) for tag in wide}
    assert all(p <= 3 for p in peaks.values()), f"{ctx}: a tag ran above its limit 3: {peaks}"
    assert max(peaks[t] for t in ("tag-0", "tag-1", "tag-2")) > 1, (
        f"{ctx}: no hot tag with limit 3 ever ran on two workers at once: {peaks}"
    )
