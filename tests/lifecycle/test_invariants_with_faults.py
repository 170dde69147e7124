"""The randomized affinity invariants (tests/test_affinity_invariants.py) with failures, retries
and timeouts injected.

Two nodes of four workers share one queue; handlers fail now and then (once or twice then
succeed, always, permanently), ask for a retry, or overrun their timeout (async ones are
cancelled, sync ones abandoned). Checked on the execution record: a tag never runs twice at once;
a worker runs at most MAX_BATCH_SIZE executions of one tag per binding and no other tag
meanwhile; every job ran exactly the attempts its fault implies and ends completed or failed as
it implies; in strict order a tag's executions start in add order, retries included.

``AQ_TEST_SEED`` replays a failure; the seed is printed and is part of every assertion message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from affinity_queue import AffinityQueue, JobContext, PermanentFailure, QueueSettings, Retry

from ..test_affinity_invariants import (
    MAX_BATCH,
    Release,
    Run,
    check_batch_bound,
    record_releases,
)

N_TASKS = 2_000
N_TAGS = 150
WORKERS_PER_INSTANCE = 4
MAX_ATTEMPTS = 3
TIMEOUT_S = 0.4
"""Generous: on a loaded 2-CPU machine the event loop was seen stalling for 180 ms, and a stall
longer than the timeout times out a handler that had no fault."""
SYNC_LAG_S = 0.1
"""A sync handler starts in its thread a little after the worker starts its clock: a timed-out
sync execution is taken to end this much before start + TIMEOUT_S (the worker's deadline)."""
DEADLINE_S = 120.0
OPEN = ("pending", "delayed", "assigned", "active")
"""The statuses of a job not yet finished (the counts hash holds one count per status)."""

FAULTS = {  # fault -> (weight, attempts, final status)
    "ok": (0.81, 1, "completed"),
    "flaky-1": (0.05, 2, "completed"),  # fails once, then succeeds
    "flaky-2": (0.03, 3, "completed"),  # fails twice, then succeeds
    "dead": (0.03, MAX_ATTEMPTS, "failed"),  # always fails
    "permanent": (0.03, 1, "failed"),  # PermanentFailure
    "retry": (0.03, 2, "completed"),  # Retry(delay_s=0.02) once
    "slow-once": (0.015, 2, "completed"),  # overruns its timeout once
    "slow-always": (0.005, MAX_ATTEMPTS, "failed"),  # overruns it every time
}


@dataclass(frozen=True, slots=True)
class Spec:
    type: str
    tag: str
    seq: int
    sleep_s: float
    fault: str

    def as_task(self) -> dict[str, Any]:
        payload = {"seq": self.seq, "sleep_s": self.sleep_s, "fault": self.fault}
        return {"type": self.type, "identifyTag": self.tag, "payload": payload}


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("AQ_TEST_SEED") or random.randrange(2**32))
    print(f"AQ_TEST_SEED={value}")
    return value


def workload(rng: random.Random) -> list[Spec]:
    weights = [1 / (rank + 1) ** 1.1 for rank in range(N_TAGS)]
    tags = rng.choices([f"tag-{i}" for i in range(N_TAGS)], weights, k=N_TASKS)
    faults = rng.choices(list(FAULTS), [w for w, _, _ in FAULTS.values()], k=N_TASKS)
    seqs: dict[str, itertools.count[int]] = defaultdict(itertools.count)
    return [
        Spec(
            "sync" if rng.random() < 0.3 else "async",
            tag,
            next(seqs[tag]),
            rng.choice([0.0, rng.uniform(0, 0.003)]),
            fault,
        )
        for tag, fault in zip(tags, faults, strict=True)
    ]


def fails(fault: str, attempt: int) -> BaseException | None:
    """The exception a handler raises for ``fault`` on ``attempt``, if any (timeouts aside)."""
    if fault == "dead" or (fault.startswith("flaky-") and attempt <= int(fault[-1])):
        return RuntimeError(f"{fault} on attempt {attempt}")
    if fault == "permanent":
        return PermanentFailure(fault)
    if fault == "retry" and attempt == 1:
        return Retry(delay_s=0.02)
    return None


def overruns(fault: str, attempt: int) -> bool:
    return fault == "slow-always" or (fault == "slow-once" and attempt == 1)


def register_handlers(aq: AffinityQueue, events: list[Run | Release]) -> None:
    def record(payload: dict[str, Any], ctx: JobContext, start: float, end: float) -> None:
        events.append(
            Run(
                ctx.job_id, ctx.identify_tag, payload["seq"], ctx.worker_id, ctx.attempt, start, end
            )
        )

    async def run_async(payload: dict[str, Any], ctx: JobContext) -> int:
        start = time.monotonic()
        if overruns(payload["fault"], ctx.attempt):
            try:
                await asyncio.sleep(3 * TIMEOUT_S)
            finally:  # cancelled at the timeout: the execution ends here
                record(payload, ctx, start, time.monotonic())
            return -1  # not reached when the timeout works
        await asyncio.sleep(payload["sleep_s"])
        record(payload, ctx, start, time.monotonic())
        if (exc := fails(payload["fault"], ctx.attempt)) is not None:
            raise exc
        return int(payload["seq"])

    def run_sync(payload: dict[str, Any], ctx: JobContext) -> int:
        start = time.monotonic()
        if overruns(payload["fault"], ctx.attempt):
            # Abandoned at the timeout; the thread goes on and returns a result nobody takes.
            # Long past it: were the event loop stalled until the thread returned (seen under a
            # load average of 4 with 2.5x), its result would arrive before the timeout fired.
            record(payload, ctx, start, start + TIMEOUT_S - SYNC_LAG_S)
            time.sleep(5 * TIMEOUT_S)
            return -1
        time.sleep(payload["sleep_s"])
        record(payload, ctx, start, time.monotonic())
        if (exc := fails(payload["fault"], ctx.attempt)) is not None:
            raise exc
        return int(payload["seq"])

    aq.worker().register_handler("async", run_async, timeout_s=TIMEOUT_S)
    aq.worker().register_handler("sync", run_sync, timeout_s=TIMEOUT_S)


async def run_workload(
    settings: QueueSettings,
    specs: list[Spec],
    rng: random.Random,
    redis: Redis,
    events: list[Run | Release],
    ctx: str,
) -> tuple[list[str], list[dict[str, str]]]:
    nodes = [AffinityQueue(settings), AffinityQueue(settings)]
    for aq in nodes:
        register_handlers(aq, events)
    producer = nodes[0].queue()
    keys = settings.keys
    try:
        half = len(specs) // 2
        ids = [j.id for j in await producer.add_bulk(s.as_task() for s in specs[:half])]
        for aq in nodes:
            await aq.start()
        i = half
        while i < len(specs):
            size = rng.choice([1, 7, 50, 200])
            chunk = specs[i : i + size]
            ids.extend(j.id for j in await producer.add_bulk(s.as_task() for s in chunk))
            i += size
            await asyncio.sleep(0)
        # Polled by the counts, the records read once at the end: reading 2,000 records every
        # 0.1 s would hold this event loop, the workers' own, for long enough to time jobs out.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            counts = await redis.hgetall(keys.counts)
            open_ = {s: n for s in OPEN if (n := int(counts.get(s, 0)))}
            if not open_:
                break
            assert time.monotonic() < deadline, f"{ctx}: not finished in {DEADLINE_S} s: {open_}"
            await asyncio.sleep(0.1)
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "attempts", "history")
            rows = await pipe.execute()
    finally:
        for aq in nodes:
            await aq.aclose()
    return ids, [{"status": s, "attempts": a, "history": h or "[]"} for s, a, h in rows]


def check_outcomes(
    runs: list[Run], specs: list[Spec], ids: list[str], rows: list[dict[str, str]], ctx: str
) -> None:
    """Nothing lost, nothing run too often: each job ran exactly the attempts its fault implies,
    numbered 1..n, and ends with the status it implies."""
    assert len(set(ids)) == len(specs), f"{ctx}: job ids are not unique"
    attempts: dict[str, list[int]] = defaultdict(list)
    for r in runs:
        attempts[r.job_id].append(r.attempt)
    wrong: list[str] = []
    for job_id, spec, row in zip(ids, specs, rows, strict=True):
        _, n, status = FAULTS[spec.fault]
        seen = sorted(attempts.get(job_id, []))
        if seen != list(range(1, n + 1)) or (row["status"], row["attempts"]) != (status, str(n)):
            errors = [(e["attempt"], e["type"], e["message"]) for e in json.loads(row["history"])]
            wrong.append(
                f"job {job_id} {spec.type} {spec.fault}: ran {seen}, stored {row['status']} "
                f"after {row['attempts']} attempts, errors {errors}"
            )
    assert not wrong, f"{ctx}: {len(wrong)} jobs ended wrong, e.g. {wrong[:10]}"
    by_id = dict(zip(ids, specs, strict=True))
    mixed = [r for r in runs if (by_id[r.job_id].tag, by_id[r.job_id].seq) != (r.tag, r.seq)]
    assert not mixed, f"{ctx}: jobs ran with another task's tag or payload: {mixed[:5]}"


def check_exclusive(runs: list[Run], ctx: str) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        grouped[r.tag].append(r)
    for tag, group in grouped.items():
        group.sort(key=lambda r: r.start)
        for prev, nxt in itertools.pairwise(group):
            assert prev.end <= nxt.start, (
                f"{ctx}: tag {tag!r} ran twice at once: job {prev.job_id} attempt "
                f"{prev.attempt} [{prev.start:.6f}, {prev.end:.6f}] and job {nxt.job_id} "
                f"attempt {nxt.attempt} [{nxt.start:.6f}, {nxt.end:.6f}]"
            )
    return grouped


@pytest.mark.parametrize("order", ["strict", "relaxed"])
async def test_invariants_hold_with_failures_retries_and_timeouts(
    make_settings, redis_client, monkeypatch, seed: int, order: str
) -> None:
    rng = random.Random(seed)
    ctx = f"AQ_TEST_SEED={seed} order={order}"
    specs = workload(rng)
    events: list[Run | Release] = []
    record_releases(monkeypatch, events)
    settings = make_settings(
        worker_count=WORKERS_PER_INSTANCE,
        max_batch_size=MAX_BATCH,
        max_attempts=MAX_ATTEMPTS,
        retry_backoff_ms=20,
        retry_backoff_max_ms=100,
        retry_order=order,
        heartbeat_timeout_ms=20_000,
        election_lock_ttl_ms=20_000,
    )
    ids, rows = await run_workload(settings, specs, rng, redis_client, events, ctx)
    runs = [e for e in events if isinstance(e, Run)]
    print(f"{ctx}: {len(runs)} executions of {len(ids)} jobs; {Counter(s.fault for s in specs)}")
    check_outcomes(runs, specs, ids, rows, ctx)
    grouped = check_exclusive(runs, ctx)
    check_batch_bound(events, ctx)
    for tag, group in grouped.items():
        firsts = [r.seq for r in group if r.attempt == 1]
        assert firsts == sorted(firsts), f"{ctx}: tag {tag!r} first runs out of order: {firsts}"
        if order == "strict":
            seqs = [r.seq for r in group]
            assert seqs == sorted(seqs), f"{ctx}: tag {tag!r} overtook a retry: {seqs[:60]}"
