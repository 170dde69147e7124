"""A data set rolled back under a running queue, as a failover to a lagging replica does: Redis
restarted from a snapshot taken while a worker ran the first of three jobs. The worker had
finished all three and gone idle; Redis says it is running the first, with two queued and no
wake-up waiting. It must go on from what Redis holds (the first job runs again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis

from affinity_queue import AffinityQueue, JobContext, QueueSettings

from ..redis_server import RedisServer
from ..support import wait_for


async def test_a_worker_goes_on_from_a_rolled_back_state(
    private_redis: RedisServer, make_settings: Callable[..., QueueSettings]
) -> None:
    # Leases long enough to outlive the restart: the worker stays registered, as in a failover.
    settings = make_settings(redis_url=private_redis.url, heartbeat_timeout_ms=60_000)
    aq = AffinityQueue(settings)
    runs: list[str] = []
    first_started = asyncio.Event()
    go_on = asyncio.Event()

    @aq.handler("t")
    async def handler(payload: int, ctx: JobContext) -> None:
        runs.append(ctx.job_id)
        if payload == 1 and len(runs) == 1:
            first_started.set()
            await go_on.wait()

    async with aq:
        q = aq.queue()
        jobs = [await q.add({"type": "t", "identifyTag": "a", "payload": i}) for i in (1, 2, 3)]
        await asyncio.wait_for(first_started.wait(), 10)
        [worker] = (await q.get_queue_stats()).workers
        with redis.Redis(port=private_redis.port) as r:
            # The replica's view: job 1 active, jobs 2 and 3 queued to the worker, its wake-ups
            # taken (the scheduler may have pushed spare ones; a replica can lack them too).
            r.delete(settings.keys.worker_wake(worker.worker_id))
            r.save()
        go_on.set()
        await wait_for(
            q.get_queue_stats, lambda s: s.completed == 3 and not s.active, what="all done"
        )
        await asyncio.to_thread(private_redis.kill)
        await asyncio.to_thread(private_redis.start)  # loads the snapshot: rolled back
        with redis.Redis(port=private_redis.port) as r:
            assert r.hget(settings.keys.job(jobs[0].id), "status") == b"active"
        await wait_for(
            q.get_queue_stats,
            lambda s: s.completed == 3 and s.active == s.assigned == s.pending == 0,
            timeout_s=15,
            what="the rolled-back jobs finished again",
        )
    assert runs.count(jobs[0].id) == 2  # at-least-once: the rolled-back run happens again
