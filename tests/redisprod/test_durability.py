"""REDIS_WAIT_REPLICAS: ``add`` returns once a replica has the write, or raises
ReplicationTimeoutError (``maybe_written``) when none confirmed it in time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from affinity_queue import (
    AffinityQueue,
    QueueSettings,
    QueueUnavailableError,
    ReplicationTimeoutError,
)

from ..redis_server import RedisServer


def _replica(master: RedisServer, replica: RedisServer) -> None:
    with redis.Redis(port=replica.port, decode_responses=True) as r:
        r.execute_command("REPLICAOF", "127.0.0.1", str(master.port))
        deadline = time.monotonic() + 10
        while r.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)


async def test_without_a_replica_add_raises_and_says_it_may_be_written(
    make_settings: Callable[..., QueueSettings],
) -> None:
    settings = make_settings(app_role="PRODUCER", redis_wait_replicas=1, redis_wait_timeout_ms=100)
    async with AffinityQueue(settings) as aq:
        q = aq.queue()
        with pytest.raises(ReplicationTimeoutError) as e:
            await q.add({"type": "t", "identifyTag": "a"})
        assert isinstance(e.value, QueueUnavailableError) and e.value.maybe_written
        assert (e.value.acked, e.value.wanted) == (0, 1)
        assert "REDIS_WAIT_REPLICAS=1" in str(e.value)
        assert (await q.get_queue_stats()).pending == 1  # the master has it


async def test_with_a_replica_an_acknowledged_add_is_on_the_replica(
    private_redis: RedisServer, queue_name: str
) -> None:
    replica = RedisServer().start()
    try:
        _replica(private_redis, replica)
        settings = QueueSettings(
            _env_file=None,
            redis_url=private_redis.url,
            pending_queue_name=queue_name,
            app_role="PRODUCER",
            redis_wait_replicas=1,
        )
        async with AffinityQueue(settings) as aq:
            jobs = [await aq.queue().add({"type": "t", "identifyTag": "a", "payload": i})
                    for i in range(20)]  # fmt: skip
            jobs += await aq.queue().add_bulk([{"type": "t", "identifyTag": "b"}] * 150)
            with redis.Redis(port=replica.port, decode_responses=True) as r:
                # Read at once: WAIT returned, so the replica applied every one of them.
                assert all(r.exists(settings.keys.job(j.id)) for j in jobs)
    finally:
        replica.cleanup()


def test_the_wait_must_fit_in_one_command() -> None:
    with pytest.raises(ValueError, match="REDIS_WAIT_TIMEOUT must be shorter than REDIS_TIMEOUT"):
        QueueSettings(_env_file=None, redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    with pytest.raises(ValueError, match="memory:// has none"):
        QueueSettings(_env_file=None, redis_url="memory://", redis_wait_replicas=1)
