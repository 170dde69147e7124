"""``python -m bench.bounds``: how long each script holds Redis when the queue is large.

Redis runs one script at a time, so a script call is a pause for every client. This fills a
private redis-server with ``--jobs`` pending jobs over ``--tags`` tags (default 1,000,000 over
100,000), then drives every operation the way the runtime does (same chunk sizes and budgets) and
reads each call's own duration from SLOWLOG (server-side time, no network). Target: no call over
5 ms. Prints one line per operation: calls, p50, p99 and max in microseconds.

    python -m bench.bounds                       # the full size, a few minutes
    python -m bench.bounds --jobs 100000 --tags 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from affinity_queue import QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import Scripts, TermConfig, new_token
from affinity_queue.queue import BULK_CHUNK
from affinity_queue.scheduler import DISPATCH_BUDGET, REAP_BUDGET
from affinity_queue.worker import HAND_BACK_BUDGET

from .env import private_redis

TARGET_US = 5000
WORKERS = 500


async def timed(redis: Redis, what: str, calls: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``calls`` with SLOWLOG recording every command; the durations of its script calls."""
    await redis.slowlog_reset()
    await calls()
    log = await redis.slowlog_get(1_000_000)
    us = sorted(int(e["duration"]) for e in log if "EVALSHA" in str(e["command"]).upper())
    row = {
        "operation": what,
        "calls": len(us),
        "p50_us": int(statistics.median(us)) if us else 0,
        "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))] if us else 0,
        "max_us": us[-1] if us else 0,
    }
    flag = "" if row["max_us"] <= TARGET_US else f"   over {TARGET_US} us"
    print(
        f"{what:<34} {row['calls']:>7} calls  p50 {row['p50_us']:>6}  "
        f"p99 {row['p99_us']:>6}  max {row['max_us']:>6} us{flag}",
        flush=True,
    )
    return row


async def run(jobs: int, tags: int) -> list[dict[str, Any]]:
    with private_redis() as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 1_000_000)
        settings = QueueSettings(_env_file=None, redis_url=server.url, pending_queue_name="big")
        s = Scripts(redis, settings.keys, "big")
        limits = {tag_id(f"tag-{i}"): 1 for i in range(10_000)}
        rows: list[dict[str, Any]] = []

        async def elect() -> int:
            return await s.elect("tok", 3_600_000, "n", "h", 1, TermConfig(10, limits=limits))

        fence = await elect()
        started = time.monotonic()

        async def fill() -> None:
            for start in range(0, jobs, BULK_CHUNK):
                entries = [
                    ("t", f"tag-{i % tags}", tag_id(f"tag-{i % tags}"), "null")
                    for i in range(start, min(jobs, start + BULK_CHUNK))
                ]
                await s.add(new_token(), entries)
                if start % 100_000 == 0:
                    await redis.slowlog_reset()  # keep the log's memory small; rows sample

        print(f"filling {jobs:,} jobs over {tags:,} tags ...", flush=True)
        rows.append(await timed(redis, f"add_bulk ({BULK_CHUNK} per call)", fill))
        print(f"  filled in {time.monotonic() - started:.0f} s", flush=True)
        workers = [f"w{i}" for i in range(WORKERS)]

        async def register() -> None:
            for w in workers:
                await s.register(w, 3_600_000, "h", 1, "e")

        rows.append(await timed(redis, "register", register))
        rows.append(await timed(redis, "elect (10,000 limits)", elect))
        fence = await elect()

        async def dispatch() -> None:
            for _ in range(40):
                await s.dispatch(fence, DISPATCH_BUDGET)

        rows.append(await timed(redis, f"dispatch (budget {DISPATCH_BUDGET})", dispatch))

        async def advance() -> None:
            for _ in range(3):
                for w in workers:
                    job = await s.advance(w, "", "", "", True)
                    if job is not None:
                        await s.advance(w, job.id, "completed", "null", True)

        rows.append(await timed(redis, "advance", advance))
        rows.append(
            await timed(
                redis,
                "add (one task)",
                lambda: s.add(new_token(), [("t", "tag-0", tag_id("tag-0"), "null")]),
            )
        )
        first = await s.add(new_token(), [("t", "tag-1", tag_id("tag-1"), "null")] * 1000)
        rows.append(
            await timed(redis, "cancel (deep in a long tag)", lambda: s.cancel("", first.ids[500]))
        )
        rows.append(
            await timed(redis, "heartbeat (500 workers)", lambda: s.heartbeat("e", 60_000, workers))
        )
        # Retention: a big completed index and a lowered KEEP_COMPLETED.
        index = settings.keys.queue_prefix + "completed"
        for start in range(0, 300_000, 10_000):
            await redis.zadd(index, {f"{i}-old": 1 for i in range(start, start + 10_000)})
        fence = await s.elect("tok", 3_600_000, "n", "h", 1, TermConfig(10, keep_completed=10))
        rows.append(await timed(redis, "advance (trimming 300,000)", advance))

        async def retire_all() -> None:
            for w in workers[: WORKERS // 2]:
                while not (await s.retire(w, HAND_BACK_BUDGET))[1]:
                    pass
                while not (await s.deregister(w, HAND_BACK_BUDGET))[1]:
                    pass

        rows.append(await timed(redis, "retire + deregister", retire_all))
        # The other half dies: their leases expire at once.
        for w in workers[WORKERS // 2 :]:
            await redis.zadd(settings.keys.workers, {w: 0})

        async def reap() -> None:
            while (await s.reap(fence, REAP_BUDGET))[2]:
                pass

        rows.append(await timed(redis, f"reap (budget {REAP_BUDGET})", reap))
        rows.append(await timed(redis, "pause + resume", lambda: _pause(s)))
        await redis.aclose()
        return rows


async def _pause(s: Scripts) -> None:
    await s.pause(new_token(), True)
    await s.pause(new_token(), False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--tags", type=int, default=100_000)
    args = parser.parse_args()
    rows = asyncio.run(run(args.jobs, args.tags))
    worst = max(rows, key=lambda r: r["max_us"])
    print(f"slowest call: {worst['operation']}, {worst['max_us']} us (target {TARGET_US} us)")


if __name__ == "__main__":
    main()
