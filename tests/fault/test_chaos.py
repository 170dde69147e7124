"""The chaos soak (issue 11, item 2): BOTH and WORKER processes on one Redis with AOF, every client
behind a TCP proxy, steady load, and a fault schedule drawn from a printed seed. Afterwards, faults
stopped and the queue drained, the ledger and Redis must agree that every accepted task completed
exactly once as Redis records it, that every repeat is explained by a fault, that no tag ran
twice at once, in order, under the batch rule, and that no add made a silent duplicate.

``AQ_CHAOS_S`` sets the seconds of faults (60 by default), ``AQ_CHAOS_SEED`` replays a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from affinity_queue.aio import cancel_and_wait

from ..proxy import Proxy
from . import ledger
from .chaos import (
    Chaos,
    Findings,
    LoadProducer,
    check_batch_rule,
    check_exclusivity,
    check_no_silent_duplicates,
    explain_repeats,
)
from .conftest import MAX_BATCH, Monitor, queue_env, settings_of

CHAOS_S = float(os.environ.get("AQ_CHAOS_S", "60"))
SEED = int(os.environ.get("AQ_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
TAGS = [f"tag{i:02d}" for i in range(40)]
BACKLOG = 1500
STALL_S = 30
"""The drain fails when no task completes for this long (it may take longer in all)."""

pytestmark = pytest.mark.timeout(CHAOS_S + 300)


async def _load(
    producer: LoadProducer, rng: random.Random, stop: asyncio.Event, direct: aioredis.Redis
) -> None:
    """Steady load: a few tasks of a random tag every 20-60 ms (pacing, not a wait), and now and
    then a burst of several tags at once; held back while the backlog exceeds ``BACKLOG`` (as a
    real producer would be), so that outages do not pile up more than a drain can take."""
    while not stop.is_set():
        with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            if int(await direct.hget(producer.settings.keys.counts, "pending") or 0) > BACKLOG:
                await asyncio.sleep(0.2)
                continue
        tag, n = rng.choice(TAGS), rng.choice((1, 1, 1, 2, 3, 6, 12))
        await producer.offer(tag, n, sleep_s=rng.choice((0.005, 0.01, 0.02, 0.04)))
        if rng.random() < 0.02:  # a burst: more tags with work than workers, for the batch rule
            for tag in rng.sample(TAGS, 15):
                await producer.offer(tag, 8, sleep_s=0.01)
        await asyncio.sleep(rng.uniform(0.02, 0.06))


async def _drained(client: aioredis.Redis, counts_key: str, producer: LoadProducer) -> bool:
    counts = await client.hgetall(counts_key)
    busy = sum(int(v) for k, v in counts.items() if k != "completed")
    return busy == 0 and await producer.all_completed()


async def test_chaos_soak(redis_factory, cluster, queue_name) -> None:
    print(f"\nCHAOS seed {SEED}, {CHAOS_S:.0f} s of faults (AQ_CHAOS_SEED={SEED} to replay)")
    rng = random.Random(SEED)
    server, spare = redis_factory(appendonly=True), redis_factory()
    proxy = await Proxy(server.port).start()
    env = queue_env(proxy.url, queue_name, WORKER_COUNT=2)
    c = cluster(env)
    for i in range(3):
        c.spawn(f"both-{i}")
    for i in range(2):
        c.spawn(f"worker-{i}", role="WORKER")
    await c.ready()
    settings = settings_of(env)
    producer = LoadProducer(settings)
    monitor = Monitor(server.url, settings).start()
    direct = aioredis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    chaos = Chaos(random.Random(rng.random()), c, server, spare, proxy, monitor)
    stop = asyncio.Event()
    load = asyncio.create_task(_load(producer, random.Random(rng.random()), stop, direct))
    try:
        await chaos.run(until=time.time() + CHAOS_S)
        stop.set()
        await load
        started = time.monotonic()
        try:
            await _wait_drained(direct, settings.keys.counts, producer)
        except AssertionError as e:
            raise AssertionError(f"seed {SEED}: {e}\n{c.report()}") from None
        drain_s = time.monotonic() - started
        assert all(n.alive for n in c.nodes if n.name not in _killed(chaos)), c.report()

        runs = c.runs()
        f = Findings()
        exist = check_no_silent_duplicates(runs, producer, await direct.hgetall(
            settings.keys.counts), f)  # fmt: skip
        written = len(exist) - len(producer.expected)
        producer.expected = exist
        outcomes = await producer.outcomes()
        try:
            ledger.check(runs, exist, outcomes, faulty_pids=None, max_runs=4)
        except AssertionError as e:
            f.problems.append(str(e))
        explain_repeats(runs, outcomes, chaos.faults, f)
        check_exclusivity(runs, chaos, f)
        check_batch_rule(runs, producer.added_at, chaos.faults, MAX_BATCH, f)
        fences = [s.fence for s in monitor.leaders() if s.fence is not None]
        if fences != sorted(set(fences)):
            f.problems.append(f"fencing numbers did not only grow: {fences}")
        f.problems += monitor.batch_violations[:10]
        print(_summary(chaos, producer, runs, written, f, fences, drain_s))
        assert not f.problems, f"seed {SEED}:\n  " + "\n  ".join(f.problems[:30])
    finally:
        stop.set()
        await cancel_and_wait([load])  # a single cancel() can be swallowed by redis-py
        await monitor.aclose()
        await direct.aclose()
        await producer.aq.aclose()
        await producer.client.aclose()
        await proxy.aclose()


async def _wait_drained(client: aioredis.Redis, counts_key: str, producer: LoadProducer) -> None:
    last, stalled_since = -1, time.monotonic()
    while not await _drained(client, counts_key, producer):
        done = int(await client.hget(counts_key, "completed") or 0)
        if done != last:
            last, stalled_since = done, time.monotonic()
        elif time.monotonic() - stalled_since > STALL_S:
            stuck = {
                u: o for u, o in (await producer.outcomes()).items() if o.status != "completed"
            }
            counts = await client.hgetall(counts_key)
            raise AssertionError(
                f"no task completed for {STALL_S} s: counts {counts}; "
                f"not completed: {dict(list(stuck.items())[:20])}"
            )
        await asyncio.sleep(0.2)


def _killed(chaos: Chaos) -> set[str]:
    return {f.detail for f in chaos.faults if f.kind.startswith("kill")}


def _summary(chaos, producer, runs, written: int, f: Findings, fences, drain_s: float) -> str:
    kinds = Counter(x.kind for x in chaos.faults)
    repeats = ledger.repeated(runs)
    return "\n".join(
        [
            f"CHAOS summary (seed {SEED}, {CHAOS_S:.0f} s of faults, drained in {drain_s:.1f} s)",
            f"  tasks: {len(producer.expected)} completed "
            f"({len(producer.added_at)} acknowledged adds, "
            f"{len(producer.unsure)} unsure of which {written} were written, "
            f"{len(producer.refused)} refused); {len(runs)} runs",
            f"  faults: {len(chaos.faults)}: "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
            f"  proxy: {chaos.proxy.replies_lost} replies lost, "
            f"{chaos.proxy.connections_cut} connections cut",
            f"  leaders: {len(fences)} terms, fences {fences[:3]}...{fences[-3:]}",
            f"  repeated tasks: {len(repeats)}; extra runs explained by "
            + (", ".join(f"{k} {n}" for k, n in sorted(f.explained.items())) or "nothing"),
            f"  max tag overlap: {f.max_overlap} (runs of a stopped process resuming past their "
            f"lease: {len(f.zombie_overlaps)})",
            f"  batch rule: {f.full_batch_continuations} new batches of the same tag after a "
            f"full one ({f.batch_checks_skipped} near a fault, not judged)",
            f"  problems: {len(f.problems)}",
            *(f"  zombie: {z}" for z in f.zombie_overlaps[:5]),
            *(f"  repeated: {rs}" for rs in list(repeats.values())[:5]),
        ]
    )
