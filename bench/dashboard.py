"""Dashboard page timings at scale: every page read through indexes with limits.

Fills a private redis-server with DEAD dead letters (real failures, through real workers: one in
ten of type ``boom-key`` failing with KeyError, the others ``boom`` with ValueError, over 1,000
tags), then PENDING pending jobs over TAGS tags (the queue paused, so they stay pending), and
times each page (median and max of 5 requests through the ASGI app, no network)::

    .venv/bin/python -m bench.dashboard --pending 1000000 --tags 100000 --dead 100000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

import httpx

from affinity_queue import AffinityQueue, QueueSettings
from affinity_queue.keys import tag_id
from bench.env import private_redis


async def fill(aq: AffinityQueue, pending: int, tags: int, dead: int) -> None:
    q = aq.queue()
    failing = (
        {"type": "boom-key" if i % 10 == 0 else "boom", "identifyTag": f"dead-{i % 1000}"}
        for i in range(dead)
    )
    await q.add_bulk(failing)
    while (await q.get_config())["dead_letters"] < dead:  # noqa: ASYNC110 - a bench, polling Redis
        await asyncio.sleep(0.5)
    print(f"{dead:,} dead letters", flush=True)
    await q.pause()
    step = 50_000
    for start in range(0, pending, step):
        await q.add_bulk(
            {"type": "noop", "identifyTag": f"tenant-{i % tags}", "payload": {"i": i}}
            for i in range(start, min(start + step, pending))
        )
    print(f"{pending:,} pending over {tags:,} tags", flush=True)


async def time_pages(aq: AffinityQueue) -> dict[str, tuple[float, float]]:
    app = aq.dashboard(allow_unauthenticated=True)
    pages = {
        "overview": "/q/default",
        "workers": "/q/default/workers",
        "tags (lists)": "/q/default/tags",
        "tag search exact": "/q/default/tags?tag=tenant-7",
        "tag search prefix": "/q/default/tags?tag=tenant-99&match=prefix",
        "tag page": f"/q/default/tags/{tag_id('tenant-7')}",
        "jobs by tag": "/q/default/jobs?status=pending&tag=tenant-7&offset=0",
        "jobs failed": "/q/default/jobs?status=failed&offset=50",
        "dead letters": "/q/default/failed",
        "dead letters, rank 50,000": "/q/default/failed?cursor=50000",
        "dead letters by error (1 in 10)": "/q/default/failed?error=KeyError",
        "dead letters by type": "/q/default/failed?type=boom",
        "dead letters by tag": "/q/default/failed?tag=dead-7",
        "dead letters, 2 filters, no match": "/q/default/failed?type=boom&error=KeyError",
        "job": "",
    }
    out = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        (first,) = await aq.queue().list_failed(limit=1)
        pages["job"] = f"/jobs/{first.id}"
        for name, path in pages.items():
            times = []
            for _ in range(5):
                t = time.perf_counter()
                r = await c.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (path, r.status_code)
            out[name] = (statistics.median(times), max(times))
    return out


async def main(args: argparse.Namespace) -> None:
    # The failures are the point: a line and a traceback for each would dominate the fill.
    logging.getLogger("affinity_queue.worker").setLevel(logging.CRITICAL)
    with private_redis() as server:
        settings = QueueSettings(
            _env_file=None, redis_url=server.url, worker_count=20, max_attempts=1
        )
        aq = AffinityQueue(settings)

        @aq.handler("boom")
        async def boom(payload: Any) -> None:
            raise ValueError("benchmark failure")

        @aq.handler("boom-key")
        async def boom_key(payload: Any) -> None:
            raise KeyError("benchmark failure")

        async with aq:
            t = time.perf_counter()
            await fill(aq, args.pending, args.tags, args.dead)
            print(f"filled in {time.perf_counter() - t:.0f} s", flush=True)
            results = await time_pages(aq)
        print(f"\n| page ({args.pending:,} pending, {args.tags:,} tags, {args.dead:,} dead "
              "letters) | median ms | max ms |\n|---|---|---|")  # fmt: skip
        for name, (median, worst) in results.items():
            print(f"| {name} | {median:.1f} | {worst:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))
