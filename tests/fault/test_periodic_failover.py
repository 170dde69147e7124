"""Periodic tasks across processes: exactly one task per tick with three BOTH nodes while the
leader dies twice, once SIGKILLed by itself between a tick's add and its record (the moment a
successor could add the tick again), once SIGKILLed from outside at an arbitrary moment."""

from __future__ import annotations

import json
import signal

import pytest
import redis.asyncio as aioredis

from affinity_queue.keys import tag_id

from .conftest import Cluster, Monitor, queue_env, settings_of, wait_for

pytestmark = pytest.mark.timeout(120)

EVERY_S = 1
NAME = "work@periodic"
TICK_MS = EVERY_S * 1000


def periodic_jobs_run(c: Cluster) -> set[str]:
    """Ids of the periodic jobs that started on any node, from the ledgers."""
    jobs = set()
    for n in c.nodes:
        for text in n.ledger.read_text().splitlines() if n.ledger.exists() else []:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue  # a torn last line (SIGKILL)
            if line["tag"] == "periodic":
                jobs.add(line["job"])
    return jobs


async def test_one_task_per_tick_across_two_leader_kills(
    redis_factory, cluster, monitors, queue_name
) -> None:
    server = redis_factory()
    env = queue_env(server.url, queue_name, PERIODIC_EVERY_S=EVERY_S)
    settings = settings_of(env)
    keys = settings.keys
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    c = cluster(env)
    mon: Monitor = monitors(server.url, settings)

    async def last_tick() -> int:
        score = await client.zscore(keys.periodic_ticks, NAME)
        return int(score) if score is not None else 0

    def dedupe_key(t: int) -> str:
        return keys.dedupe_prefix + tag_id(f"periodic:{NAME}:{t}")

    async def ticks_since(mark: int, n: int) -> bool:
        return await last_tick() >= mark + n * TICK_MS

    try:
        # Where the schedule starts, recorded before any node runs, as a first leader records it
        # (only if none is there). Read once a leader is up, the record may already be its first
        # tick (in CI a leader started 47 ms before one), and that tick would look early.
        secs, micros = await client.time()
        baseline = secs * 1000 + micros // 1000
        await client.zadd(keys.periodic_ticks, {NAME: baseline})
        # n0 leads first and kills itself right after its 4th add, before recording the tick.
        n0 = c.spawn("n0", PERIODIC_DIE_AFTER_ADDS=4)
        await c.ready(n0)
        await mon.new_leader(other_than=None, limit_s=10)
        n1, n2 = c.spawn("n1"), c.spawn("n2")
        await wait_for(lambda: not n0.alive, limit_s=15, what="n0 to kill itself after 4 adds")
        assert n0.proc.returncode == -signal.SIGKILL
        # It died with its 4th tick added but not recorded. Read at once (before waiting for the
        # standbys), its lease still holds, so nobody has led since: the successor must find
        # that tick due and add it again.
        unrecorded = await last_tick() + TICK_MS
        assert await client.exists(dedupe_key(unrecorded)), "the 4th add happened"
        assert (await client.hgetall(keys.leader)).get("node") == n0.node_id
        await c.ready(n1, n2)
        second = await mon.new_leader(other_than=n0.node_id, limit_s=10)

        # The second leader runs a few ticks, then is SIGKILLed from outside.
        mark = await last_tick()
        await wait_for(lambda: ticks_since(mark, 3), limit_s=15, what="3 ticks on leader 2")
        victim = c.leader_node(second.node)
        assert victim is not None
        victim.send(signal.SIGKILL)
        third = await mon.new_leader(other_than=second.node, limit_s=10)
        mark = await last_tick()
        await wait_for(lambda: ticks_since(mark, 3), limit_s=15, what="3 ticks on leader 3")
        survivor = c.leader_node(third.node)
        assert survivor is not None
        await c.stop(survivor)
        for n in c.nodes:
            if n.alive:
                await c.stop(n)

        # Every tick from the first after the baseline to the last recorded one has exactly one
        # job (its deduplication key names it); a stop between a tick's add and its record may
        # leave one more. Those jobs are all the queue holds, and all the periodic runs.
        end = await last_tick()
        first = baseline // TICK_MS * TICK_MS + TICK_MS
        ticks = list(range(first, end + 1, TICK_MS))
        assert len(ticks) >= 10, f"only {len(ticks)} ticks"

        if await client.exists(dedupe_key(end + TICK_MS)):
            ticks.append(end + TICK_MS)
        assert not await client.exists(dedupe_key(first - TICK_MS)), "a tick before the start ran"
        ids = await client.mget([dedupe_key(t) for t in ticks])
        missing = [t for t, job in zip(ticks, ids, strict=True) if job is None]
        assert not missing, f"ticks without a job: {missing} (of {len(ticks)})"
        assert len(set(ids)) == len(ticks), "two ticks named one job"
        ran = periodic_jobs_run(c)
        assert ran <= set(ids), f"periodic jobs that belong to no tick: {ran - set(ids)}"
        assert len(ran) >= len(ticks) - 2, "the ticks before the final stop ran"
        counts = await client.hgetall(keys.counts)
        statuses = ("pending", "delayed", "assigned", "active", "completed", "failed", "cancelled")
        total = sum(int(counts.get(s, 0)) for s in statuses)
        assert total == len(ticks), f"{total} jobs exist for {len(ticks)} ticks: {counts}"
    finally:
        await client.aclose()
