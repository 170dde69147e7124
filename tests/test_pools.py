"""Connection pools: sized from what each part holds, waited for rather than failing fast, and
never reshaped by options in REDIS_URL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from affinity_queue import AffinityQueue, QueueSettings, QueueUnavailableError, Role

from .support import drained, wait_for

SettingsFactory = Callable[..., QueueSettings]


async def test_a_thousand_workers_in_one_process_still_place_jobs(
    make_settings: SettingsFactory, redis_client: Redis
) -> None:
    """Each idle worker holds a connection for its wait: with WORKER_COUNT=1000 they used to
    exhaust redis-py's 100-connection pool, and the leader's own wait failed forever."""
    maxclients = int((await redis_client.config_get("maxclients"))["maxclients"])
    assert maxclients > 1100, f"the test Redis accepts only {maxclients} clients"
    # Leases of 20 s: registering and renewing 1,000 workers on a loaded 2-core machine can take
    # longer than the suite's usual 2 s lease, and an expired lease is never renewed.
    aq = AffinityQueue(
        make_settings(worker_count=1000, heartbeat_interval_ms=1000, heartbeat_timeout_ms=20_000)
    )
    runs: Counter[int] = Counter()

    @aq.handler("t")
    async def handle(payload: int) -> None:
        runs[payload] += 1

    total = 400
    async with aq:
        await wait_for(
            aq.queue().get_queue_stats,
            lambda s: len(s.workers) == 1000,
            timeout_s=60,
            what="1000 workers registered",
        )
        await aq.queue().add_bulk(
            {"type": "t", "identifyTag": f"tag-{i % 200}", "payload": i} for i in range(total)
        )
        stats = await drained(aq.queue(), total, timeout_s=60)
    assert stats.completed == total and stats.failed == 0
    assert runs == Counter(range(total))


async def test_a_burst_of_concurrent_adds_waits_for_connections(
    make_settings: SettingsFactory,
) -> None:
    """A burst past the pool's size used to fail fast (MaxConnectionsError) while Redis was
    healthy; now each add waits for a connection and every task is added exactly once."""
    burst = 1000  # a hundred times the pool below
    aq = AffinityQueue(make_settings(app_role=Role.SCHEDULER, redis_max_connections=10))
    async with aq:
        queue = aq.queue()
        jobs = await asyncio.gather(
            *(
                queue.add({"type": "t", "identifyTag": f"tag-{i % 50}", "payload": i})
                for i in range(burst)
            )
        )
        assert len({job.id for job in jobs}) == burst
        stored = await asyncio.gather(*(queue.get_job(job.id) for job in jobs))
        assert sorted(job.payload for job in stored if job is not None) == list(range(burst))
        assert (await queue.get_queue_stats()).pending == burst


async def test_url_options_cannot_cut_blocking_waits_short(
    make_settings: SettingsFactory, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """``?socket_timeout=1`` replaced the blocking client's timeout: waits longer than a second
    timed out, a permanent "Redis unavailable" warning, and jobs placed seconds late."""
    base = make_settings().resolved_redis_url
    settings = make_settings(
        redis_url=f"{base}?socket_timeout=1&client_name=aq-url-test",
        # Waits of 3 s: longer than the URL's socket timeout.
        heartbeat_interval_ms=3000,
        heartbeat_timeout_ms=10_000,
        election_lock_ttl_ms=10_000,
        scheduler_interval_ms=3000,
    )
    with caplog.at_level(logging.WARNING, logger="affinity_queue"):
        aq = AffinityQueue(settings)
    (ignored,) = [r.getMessage() for r in caplog.records]
    assert "REDIS_URL" in ignored and "socket_timeout=1" in ignored and "REDIS_TIMEOUT" in ignored
    caplog.clear()

    finished: asyncio.Queue[float] = asyncio.Queue()

    @aq.handler("t")
    async def handle(payload: Any) -> None:
        finished.put_nowait(time.monotonic())

    async with aq:
        await wait_for(
            aq.queue().get_queue_stats,
            lambda s: s.leader is not None and len(s.workers) == 1,
            what="leader and worker up",
        )
        with caplog.at_level(logging.WARNING, logger="affinity_queue"):
            await asyncio.sleep(3.5)  # idle: every wait outlasts the URL's socket timeout
            added_at = time.monotonic()
            job = await aq.queue().add({"type": "t", "identifyTag": "a"})
            done_at = await asyncio.wait_for(finished.get(), timeout=10)
        # Warnings only: an earlier test may have left the logger at INFO (the CLI sets it).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert done_at - added_at < 1.0, f"job {job.id} ran {done_at - added_at:.2f} s after add"
        # Options the library does not set itself still reach the connections.
        names = [c["name"] for c in await redis_client.client_list()]
        assert "aq-url-test" in names


async def test_a_command_that_never_got_a_connection_wrote_nothing(
    make_settings: SettingsFactory,
) -> None:
    """Past REDIS_POOL_TIMEOUT a producer gets QueueUnavailableError, and it says that nothing
    was sent (a retry cannot add the task twice)."""
    settings = make_settings(
        app_role=Role.SCHEDULER, redis_max_connections=2, redis_pool_timeout_ms=10
    )
    async with AffinityQueue(settings) as aq:
        queue = aq.queue()
        results = await asyncio.gather(
            *(queue.add({"type": "t", "identifyTag": "a", "payload": i}) for i in range(1000)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors, "1000 adds through two connections all got one within 10 ms"
        assert all(isinstance(e, QueueUnavailableError) and not e.maybe_written for e in errors)
        assert (await queue.get_queue_stats()).pending == len(results) - len(errors)
