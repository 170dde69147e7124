"""Isolation (issue 3, item 8): two queues with their own prefixes and foreign keys share one
database. Killing workers and leaders of one queue, and recovering them, touch no other key."""

from __future__ import annotations

import signal

import pytest
import redis.asyncio as aioredis

from . import ledger
from .conftest import assert_no_keys_command, queue_env, settings_of, wait_for

pytestmark = pytest.mark.timeout(120)


async def _snapshot(client: aioredis.Redis, is_ours) -> dict[bytes, tuple[bytes, bytes, bool]]:
    """Every key that ``is_ours`` rejects: (type, DUMP, has a TTL). SCAN, never KEYS."""
    out = {}
    async for key in client.scan_iter(count=1000):
        if is_ours(key):
            continue
        async with client.pipeline(transaction=False) as pipe:
            kind, dumped, pttl = await pipe.type(key).dump(key).pttl(key).execute()
        out[key] = (kind, dumped, pttl > 0)
    return out


async def _foreign_keys(client: aioredis.Redis, a: str) -> None:
    """Keys of other applications, several of them shaped like queue A's."""
    await client.set("foreign:string", "v")
    await client.hset("foreign:hash", mapping={"status": "running", "batch": 3})
    await client.rpush("foreign:list", "1", "2", "3")
    await client.zadd("foreign:zset", {"w-1": 0, "w-2": 1})
    await client.sadd("foreign:set", "x")
    await client.xadd("foreign:stream", {"k": "v"})
    await client.set("foreign:ttl", "v", px=600_000)
    await client.set("{other}:x", "v")
    await client.zadd("{other}:workers", {"dead-worker": 0})  # an expired lease, elsewhere
    await client.hset("{other}:leader", mapping={"token": "t", "fence": 1})
    for key in (
        f"app-wq-z:{{{a}}}:ghost",  # another prefix, queue A's hash tag
        f"xapp-wq:{{{a}}}:ghost",
        f"APP-WQ:{{{a}}}:ghost",
        f"app-wq:{{{a}}}x:ghost",  # queue A's prefix, another hash tag
        f"app-wq:{{{a}-old}}:ghost",
        f"app-ws:{{{a}}}",  # no id part
        f"{{{a}}}x:workers",
    ):
        await client.rpush(key, "1")
    await client.hset(f"app-ws:{{{a}-old}}:ghost", mapping={"status": "running", "tid": "74"})


async def test_cleanup_touches_only_its_own_queue(
    redis_factory, cluster, producers, monitors, queue_name
) -> None:
    server = redis_factory()
    a, b = f"{queue_name}-a", f"{queue_name}-b"
    env_a = queue_env(server.url, a, WORKER_QUEUE_PREFIX="app-wq", WORKER_STATE_PREFIX="app-ws")
    env_b = queue_env(server.url, b, WORKER_QUEUE_PREFIX="b-wq", WORKER_STATE_PREFIX="b-ws")
    ca, cb = cluster(env_a), cluster(env_b)
    b1 = cb.spawn("b1", WORKER_COUNT=2)
    a1 = ca.spawn("a1")
    await ca.ready(a1)
    mon_a = monitors(server.url, settings_of(env_a))
    first = await mon_a.new_leader(other_than=None, limit_s=10)
    a2 = ca.spawn("a2")
    aw = ca.spawn("aw", role="WORKER", WORKER_COUNT=2)
    await ca.ready()
    await cb.ready()
    pa, pb = producers(settings_of(env_a)), producers(settings_of(env_b))

    # Queue B works, then dies with jobs in flight: its keys stay, with expired leases.
    for tag in ("x", "y"):
        await pb.add(tag, 2)
    await pb.wait_completed(limit_s=20)
    await pb.add("x", 5, sleep_s=5)
    await wait_for(lambda: any(r.tag == "x" and r.end is None for r in cb.runs()),
                   limit_s=10, what="queue B to be busy")  # fmt: skip
    b1.send(signal.SIGKILL)
    client = aioredis.Redis.from_url(server.url)  # bytes, for DUMP
    try:

        async def b_lease_gone() -> bool:
            return await client.exists(f"{{{b}}}:leader") == 0

        await wait_for(b_lease_gone, limit_s=10, what="queue B's leader lease to expire")
        assert await client.zcard(f"{{{b}}}:workers") == 2

        await _foreign_keys(client, a)
        ours = (f"{{{a}}}:", f"app-wq:{{{a}}}:", f"app-ws:{{{a}}}:")

        def is_ours(key: bytes) -> bool:
            return key.decode().startswith(ours)

        before = await _snapshot(client, is_ours)

        # Queue A loses a worker process mid-batch and then its leader; the successor's new
        # term reaps them through the lease index.
        for tag in ("p", "q", "r", "s"):
            await pa.add(tag, 4, sleep_s=0.3)
        await wait_for(lambda: any(r.pid == aw.pid for r in ca.runs()), limit_s=10,
                       what="the worker process to run something")  # fmt: skip
        aw.send(signal.SIGKILL)
        leader = ca.leader_node(first.node)
        assert leader is a1
        a1.send(signal.SIGKILL)
        await mon_a.new_leader(other_than=first.node, limit_s=10)
        await pa.wait_completed(limit_s=30)

        async def reaped() -> bool:
            stats = await pa.aq.queue().get_queue_stats()
            return {w.pid for w in stats.workers} == {a2.pid}

        await wait_for(reaped, limit_s=15, what="the dead workers of A to go")
        after = await _snapshot(client, is_ours)
    finally:
        await client.aclose()

    assert after.keys() == before.keys(), (
        f"appeared: {sorted(after.keys() - before.keys())}, "
        f"vanished: {sorted(before.keys() - after.keys())}"
    )
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"changed: {changed}"
    assert len(before) >= 25, sorted(before)  # B's keys and the foreign ones were compared
    ledger.check(ca.runs(), pa.expected, await pa.outcomes(), faulty_pids={aw.pid, a1.pid})
    await assert_no_keys_command(server.url)
