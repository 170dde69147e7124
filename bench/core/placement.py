"""Placement rate: the ``dispatch`` script alone, against backlogs of different sizes and shapes.

The issue's requirement is that placing a task costs the same whatever the number of pending
tasks or of tags. Going through the scheduler would time wake-ups and workers too, so this calls
the scripts directly: ``elect`` for a fence, ``add`` to fill, ``register``/``deregister`` to offer
and take back idle workers, and times ``dispatch`` only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from affinity_queue.keys import QueueKeys, tag_id
from affinity_queue.lua import Scripts, TermConfig, new_token
from affinity_queue.scheduler import DISPATCH_BUDGET
from affinity_queue.worker import HAND_BACK_BUDGET

from ..env import wait_until_rehashed
from ..stats import Series
from . import MAX_BATCH, Config

PLACEMENT_WORKERS = 50
"""Idle workers offered to each timed dispatch call; with MAX_BATCH=10 they take 500 jobs, so
every variant times the same amount of work per call."""
LONG_LEASE_MS = 3_600_000


async def _leave(scripts: Scripts, worker_id: str) -> None:
    """Deregister a worker, its jobs going back to the front of their tags (in slices)."""
    while not (await scripts.deregister(worker_id, HAND_BACK_BUDGET))[1]:
        pass


async def fill(scripts: Scripts, pending: int, tags: int, chunk: int = 1000) -> None:
    """Queue ``pending`` jobs round-robin over ``tags`` tags, a few chunks in flight at once."""
    tids = [tag_id(f"tenant-{t}") for t in range(tags)]
    gate = asyncio.Semaphore(4)

    async def one(lo: int) -> None:
        entries = [
            ("noop", f"tenant-{i % tags}", tids[i % tags], str(i))
            for i in range(lo, min(lo + chunk, pending))
        ]
        async with gate:
            await scripts.add(new_token(), entries)

    await asyncio.gather(*(one(lo) for lo in range(0, pending, chunk)))


async def _evalsha_usec(admin: Redis) -> int:
    return int((await admin.info("commandstats"))["cmdstat_evalsha"]["usec"])


async def placement(url: str, admin: Redis, pending: int, tags: int, cfg: Config) -> dict[str, Any]:
    """Placed jobs/s (wall, one round trip per call) and Redis µs per placed job.

    Each timed call is offered PLACEMENT_WORKERS freshly registered idle workers and places
    a whole batch on each, so the per-job work is the same in every variant; then, untimed, the
    workers deregister, which puts their jobs back at the front of their tags: the backlog is the
    same before every call. With fewer tags than workers, a tag may bind several workers
    (per-tag concurrency) so that a call still places as many jobs. Every variant has more than
    one batch per tag, so no visit empties a tag (which would take a cheaper path).
    """
    name = f"bench-{secrets.token_hex(4)}"
    redis = Redis.from_url(url, decode_responses=True)
    scripts = Scripts(redis, QueueKeys(name, f"{name}-wq", f"{name}-ws"), name)
    host, pid = socket.gethostname(), os.getpid()
    concurrency = max(1, -(-PLACEMENT_WORKERS // tags))
    per_call = min(DISPATCH_BUDGET, PLACEMENT_WORKERS * MAX_BATCH, pending)
    calls = max(1, cfg.placement_placed // per_call)
    try:
        fence = await scripts.elect(
            secrets.token_hex(8),
            LONG_LEASE_MS,
            "bench",
            host,
            pid,
            TermConfig(max_batch=MAX_BATCH, concurrency=concurrency),
        )
        memory_before = int((await admin.info("memory"))["used_memory"])
        t = time.perf_counter()
        await fill(scripts, pending, tags)
        fill_s = time.perf_counter() - t
        memory_after = int((await admin.info("memory"))["used_memory"])
        rehash_wait_s = await wait_until_rehashed(admin)
        rate, server = Series("jobs/s"), Series("µs/job")
        for run in range(cfg.runs):
            walls_s: list[float] = []
            usecs: list[int] = []
            for c in range(calls):
                ids = [f"bench-{run}-{c}-{i}" for i in range(PLACEMENT_WORKERS)]
                await asyncio.gather(
                    *(scripts.register(w, LONG_LEASE_MS, host, pid, "bench") for w in ids)
                )
                before = await _evalsha_usec(admin)
                t = time.perf_counter()
                got, _, _ = await scripts.dispatch(fence, DISPATCH_BUDGET)
                walls_s.append(time.perf_counter() - t)
                usecs.append(await _evalsha_usec(admin) - before)
                if got != per_call:
                    raise RuntimeError(f"placement: dispatch placed {got}, expected {per_call}")
                await asyncio.gather(*(_leave(scripts, w) for w in ids))
            # The median call, not the total: a burst of load from a neighbour on the shared
            # machine spoils a few calls of ~1 ms, and must not move the run's figure.
            rate.add(per_call / statistics.median(walls_s))
            server.add(statistics.median(usecs) / per_call)
    finally:
        await redis.aclose()
    return {
        "pending": pending,
        "tags": tags,
        "per_tag_concurrency": concurrency,
        "jobs_per_call": per_call,
        "calls_per_run": calls,
        "fill_s": fill_s,
        "fill_jobs_per_s": pending / fill_s,
        "rehash_wait_s": rehash_wait_s,
        "bytes_per_pending_job": (memory_after - memory_before) / pending,
        "placed_per_s": rate.to_json(),
        "redis_us_per_placed_job": server.to_json(),
    }


async def placements(
    url: str, admin: Redis, cfg: Config, fresh: Callable[[], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Every variant: the backlog sizes over a fixed tag count, then the tag counts over one
    large backlog. One fill per variant; the runs repeat on it."""
    variants = [("backlog", p, cfg.placement_tags_fixed) for p in cfg.placement_pending]
    variants += [("tags", cfg.placement_tags_pending, t) for t in cfg.placement_tags]
    results = []
    for axis, pending, tags in variants:
        print(f"placement: {pending:,} pending over {tags:,} tags", file=sys.stderr, flush=True)
        await fresh()
        results.append({"axis": axis, **await placement(url, admin, pending, tags, cfg)})
    await fresh()
    return results
