"""What the chaos soak found (issue 11): a write Redis refuses for a moment (OOM here; READONLY
during a failover is the same) makes a handler that had *finished* run again.

The worker's ``advance`` after the handler returns gets the OOM error reply; the worker loop
treats it as a bug ("worker ... failed; handing its jobs back"), its hand-back is refused too, it
re-registers under a new id, and when the old lease lapses the reaper puts the finished job back:
it runs again with attempt 2. A refused script wrote nothing, so the worker now retries
``advance`` (``Connectivity.retry`` rides out every Redis refusal) and records the outcome once.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from .conftest import queue_env, settings_of, wait_for

pytestmark = pytest.mark.timeout(60)


async def test_finished_run_is_not_repeated_after_a_short_oom(
    redis_factory, cluster, producers, queue_name
) -> None:
    server = redis_factory()
    env = queue_env(server.url, queue_name)
    c = cluster(env)
    c.spawn("n1")
    await c.ready()
    producer = producers(settings_of(env))
    (uid,) = await producer.add("t", sleep_s=0.5)
    await wait_for(lambda: any(r.uid == uid for r in c.runs()), limit_s=10, what="the start")
    admin = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        await admin.config_set("maxmemory", 1)  # every write refused with OOM, well within a lease
        try:
            await wait_for(
                lambda: any(r.uid == uid and r.end for r in c.runs()), limit_s=5, what="the end"
            )
            seen = await _refused(admin)
            # The advance right after the end, or the next heartbeat (every 500 ms), is refused.
            await wait_for(
                lambda: _more_refused(admin, seen), limit_s=2, what="another refused write"
            )
        finally:
            await admin.config_set("maxmemory", 0)
    finally:
        await admin.aclose()
    await producer.wait_completed(limit_s=20)
    runs = [r for r in c.runs() if r.uid == uid]
    assert len(runs) == 1, f"a finished run was repeated after a 1 s OOM: {runs}"


async def _refused(admin: aioredis.Redis) -> int:
    stats = await admin.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def _more_refused(admin: aioredis.Redis, seen: int) -> bool:
    return await _refused(admin) > seen
