"""Queues on a real Redis Cluster: two queues on two masters under a randomized workload, then
the same while (a) a master is killed and its replica takes over, (b) a queue's slot is moved to
another master. Every accepted task runs, per-tag order and exclusivity hold (the ledger check of
tests/fault), nothing dies, and processing resumes; the stall each fault caused is printed.

``AQ_CLUSTER_SECONDS`` lengthens the load around each fault (default 4 s) for a longer soak.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import pytest
from redis.crc import key_slot

from affinity_queue import AffinityQueue, QueueService

from .load import Load, settings
from .redis_cluster import RedisCluster

pytestmark = pytest.mark.timeout(180)

QUEUES = ["orders", "billing"]
"""Their hash tags ``{orders}`` and ``{billing}`` hash to slots 105 and 12682: the first and
the third master of a 3-master cluster made by ``redis-cli --cluster create``."""
LOAD_S = float(os.environ.get("AQ_CLUSTER_SECONDS", "4"))
DRAIN_S = 40.0


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("AQ_TEST_SEED") or random.randrange(2**32))
    print(f"AQ_TEST_SEED={value}")
    return value


def owners(c: RedisCluster) -> dict[str, int]:
    return {q: c.owner(key_slot(q.encode())).port for q in QUEUES}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name.startswith("affinity_queue") and r.levelno >= logging.ERROR
    ]  # fmt: skip


async def test_two_queues_on_two_masters(
    redis_cluster: RedisCluster, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    where = owners(redis_cluster)
    assert where["orders"] != where["billing"], f"both queues on one master: {where}"
    load = Load(redis_cluster, QUEUES, seed)
    try:
        await load.start()
        await asyncio.sleep(LOAD_S)  # load, not a wait: the producers add meanwhile
        # Keyless commands go to the queue's own master (its clock is the scripts' clock).
        for name in QUEUES:
            client = load.instances[0].queue(load.queue_name(name))._redis
            assert client.get_default_node().port == where[name]  # type: ignore[attr-defined]
        await _wait_for_one(load.instances[1].queue(), 0)  # wait_for's subscription works
        await load.stop_producing()
        for name in QUEUES:
            await load.drained(name, DRAIN_S)
            await load.check(name)
            assert len(load.queues[name].expected) > 100, "the load did not run"
        # Every key of a queue is in its slot, on its master; the script KEYS never exist.
        for name in QUEUES:
            node = redis_cluster.by_port(where[name]).client()
            slot = key_slot(name.encode())
            assert node.cluster("countkeysinslot", slot) > 0
            keys = load.instances[0].settings(load.queue_name(name)).keys
            assert node.exists(*keys.script_keys) == 0, "a script KEY exists: see keys.py"
    finally:
        await load.aclose()
    assert not errors_logged(caplog)


async def _wait_for_one(queue: QueueService, seq: int) -> None:
    """Add one task outside the workload and ``wait_for`` it (its result is None)."""
    payload = {"uid": f"w#{seq}", "seq": seq, "sleep_s": 0}
    job = await queue.add({"type": "work", "identifyTag": "w", "payload": payload})
    assert await queue.wait_for(job.id, timeout_s=20) is None


async def test_a_burst_past_the_pool_waits_for_connections(redis_cluster: RedisCluster) -> None:
    """As on one server (tests/test_pools.py): 200 adds at once through 4 connections queue
    for them rather than fail."""
    aq = AffinityQueue(settings(redis_cluster.url, "burst", redis_max_connections=4,
                                app_role="PRODUCER"))  # fmt: skip
    async with aq:
        tasks = [{"type": "t", "identifyTag": f"tag-{i % 7}", "payload": i} for i in range(200)]
        jobs = await asyncio.gather(*(aq.queue().add(t) for t in tasks))
        assert len({j.id for j in jobs}) == 200
        assert (await aq.queue().get_queue_stats()).pending == 200


async def test_master_killed_under_load(
    redis_cluster: RedisCluster, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL the master of ``orders``: its replica takes over after cluster-node-timeout, the
    whole cluster refuses commands until then (CLUSTERDOWN), and both queues resume."""
    load = Load(redis_cluster, QUEUES, seed)
    try:
        await load.start()
        await asyncio.sleep(LOAD_S)
        orders = load.instances[1].queue()
        await _wait_for_one(orders, 0)  # subscribed on the master about to die
        victim = redis_cluster.owner(key_slot(b"orders"))
        killed_at = time.time()
        victim.kill()
        promoted_s = await asyncio.to_thread(
            redis_cluster.wait_failover, key_slot(b"orders"), victim
        )
        assert redis_cluster.owner(key_slot(b"orders")).port != victim.port
        await _wait_for_one(orders, 1)  # subscribes again, on the new master
        await asyncio.sleep(LOAD_S)
        await load.stop_producing()
        lost: dict[str, set[str]] = {}
        for name in QUEUES:
            lost[name] = await _lost_to_failover(load, name, killed_at)
            await load.drained(name, DRAIN_S, skip=lost[name])
            await load.check(name, reruns=True, lost_ok=lost[name])
        stalls = {name: round(load.stall_s(name, killed_at), 2) for name in QUEUES}
        n_lost = {name: len(uids) for name, uids in lost.items()}
        reruns = {name: load.reruns(name) for name in QUEUES}
        print(
            f"failover: replica promoted {promoted_s:.2f} s after the kill; processing "
            f"stalled {stalls} s; acknowledged tasks lost {n_lost}; reruns {reruns}"
        )
        for name in QUEUES:
            assert load.done(name) > 0 and stalls[name] < promoted_s + 10, stalls
    finally:
        await load.aclose()
    assert not errors_logged(caplog)


async def _lost_to_failover(load: Load, name: str, killed_at: float) -> set[str]:
    """Accepted tasks the new master never had: acknowledged by the old one just before it died,
    not yet replicated (replication is asynchronous). Any other missing task is a bug."""
    outs = await load.outcomes(name)
    missing = {u for u, o in outs.items() if o.status == "missing"}
    late = {u for u in missing if load.queues[name].accepted_at[u] >= killed_at - 1.0}
    assert missing == late, f"{name}: tasks missing that were accepted long before the kill"
    return late


async def test_slot_resharded_under_load(
    redis_cluster: RedisCluster, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Move the slot of ``orders`` to the master that serves neither queue, as
    ``redis-cli --cluster reshard`` moves a slot (IMPORTING, MIGRATING, MIGRATE in batches of 10
    keys, SETSLOT NODE), slowly enough that the slot stays open for a second or two: while it
    is open every script of the queue is refused (ASK, then TRYAGAIN) and retried; ``billing``
    does not notice."""
    load = Load(redis_cluster, QUEUES, seed)
    try:
        await load.start()
        await asyncio.sleep(LOAD_S)
        orders = load.instances[1].queue()
        await _wait_for_one(orders, 0)  # subscribed on the master that gives the slot away
        where = owners(redis_cluster)
        source = redis_cluster.by_port(where["orders"])
        target = next(n for n in redis_cluster.masters() if n.port not in where.values())
        started_at = time.time()
        moved = await asyncio.to_thread(
            redis_cluster.move_slot, key_slot(b"orders"), target, pause_s=0.02
        )
        took_s = time.time() - started_at
        assert redis_cluster.owner(key_slot(b"orders")).port == target.port != source.port
        await _wait_for_one(orders, 1)  # the same subscription hears the new owner's PUBLISH
        await asyncio.sleep(LOAD_S)
        await load.stop_producing()
        for name in QUEUES:
            await load.drained(name, DRAIN_S)
            await load.check(name)
        stalls = {name: round(load.stall_s(name, started_at), 2) for name in QUEUES}
        refused = target.client().info("errorstats").get("errorstat_TRYAGAIN", {}).get("count", 0)
        assert refused > 0, "no script was refused while the slot moved: the test missed it"
        print(
            f"reshard: {moved} keys moved in {took_s:.2f} s ({refused} TRYAGAIN); processing "
            f"stalled {stalls} s; adds refused {load.queues['orders'].refused}"
        )
        assert stalls["orders"] < took_s + 5 and stalls["billing"] < 1.5, stalls
    finally:
        await load.aclose()
    assert not errors_logged(caplog)
