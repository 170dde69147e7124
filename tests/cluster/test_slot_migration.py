"""What the scripts' KEYS make Redis do while the queue's slot is half moved (keys.py): refuse
every script until the move ends, never run one against part of the data."""

from __future__ import annotations

import pytest
from redis.crc import key_slot
from redis.exceptions import AskError, ResponseError

from affinity_queue import AffinityQueue, QueueUnavailableError

from .load import settings
from .redis_cluster import RedisCluster

pytestmark = pytest.mark.timeout(60)


async def test_scripts_wait_out_a_half_moved_slot(redis_cluster: RedisCluster) -> None:
    name = "orders"
    slot = key_slot(name.encode())
    aq = AffinityQueue(settings(redis_cluster.url, name, app_role="PRODUCER",
                                redis_timeout_ms=500))  # fmt: skip
    async with aq:
        q = aq.queue()
        for i in range(50):
            await q.add({"type": "t", "identifyTag": f"tag-{i % 5}", "payload": i})
        source = redis_cluster.owner(slot)
        target = next(m for m in redis_cluster.masters() if m is not source)
        src, dst = source.client(), target.client()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(target))
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        half = keys[: len(keys) // 2]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *half)
        before = (sorted(src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)), half)

        # Half the keys on each node: the script is refused (ASK, then TRYAGAIN) until the
        # producer's REDIS_TIMEOUT, and it says nothing was written.
        with pytest.raises(QueueUnavailableError) as refused:
            await q.add({"type": "t", "identifyTag": "tag-0", "payload": "during"})
        assert refused.value.maybe_written is False
        after = (sorted(src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)), half)
        assert after == before and dst.cluster("countkeysinslot", slot) == len(half)
        assert target.client().info("errorstats")["errorstat_TRYAGAIN"]["count"] > 0

        rest = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
        for node in redis_cluster.masters():
            node.client().execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", redis_cluster.node_id(target)
            )
        # Moved: the same client follows MOVED to the new owner, where all the data is.
        job = await q.add({"type": "t", "identifyTag": "tag-0", "payload": "after"})
        stats = await q.get_queue_stats()
        assert stats.pending == 51, stats
        assert (await q.get_job(job.id)) is not None
        assert src.cluster("countkeysinslot", slot) == 0


def test_declaring_real_keys_instead_would_run_half_a_script(redis_cluster: RedisCluster) -> None:
    """The hazard keys.py avoids, shown on Redis itself: a script that declares a key still on
    the source runs there, and fails at the first key already moved, after its first write."""
    slot = key_slot(b"hazard")
    source = redis_cluster.owner(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    src = source.client()
    src.set("{hazard}:here", 0)
    src.set("{hazard}:moved", 0)
    target.client().execute_command(
        "CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(source)
    )
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(target))
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", "{hazard}:moved")
    script = "redis.call('INCR', KEYS[1]); return redis.call('INCR', '{hazard}:moved')"
    with pytest.raises(ResponseError, match="non local key"):
        src.eval(script, 1, "{hazard}:here")
    assert src.get("{hazard}:here") == "1", "the first write stayed"
    # Our way: declared keys that never exist make the source redirect before anything runs.
    with pytest.raises(AskError):
        src.eval(script, 2, "{hazard}:", "{hazard}:never")
    assert src.get("{hazard}:here") == "1"
