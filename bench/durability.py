"""``python -m bench.durability``: what REDIS_WAIT_REPLICAS=1 costs ``add``.

One master and one replica (private redis-servers on loopback); the modes ``wait=0`` and
``wait=1`` run interleaved (round 1 of each, then round 2...), each round adding ``--tasks``
tasks one ``add`` at a time from 1 and from 20 coroutines, and with ``add_bulk``. Figures are
medians of adds/s; the ratio is wait=1 over wait=0, measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from typing import Any

import redis

from affinity_queue import AffinityQueue, QueueSettings
from tests.redis_server import RedisServer


def _settings(url: str, wait: int) -> QueueSettings:
    name = f"bench-d-{secrets.token_hex(4)}"
    return QueueSettings(
        _env_file=None,
        redis_url=url,
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
        app_role="PRODUCER",
        redis_wait_replicas=wait,
        redis_wait_timeout_ms=1000,
    )


async def _round(url: str, wait: int, tasks: int) -> dict[str, float]:
    rates: dict[str, float] = {}
    async with AffinityQueue(_settings(url, wait)) as aq:
        q = aq.queue()

        async def one_by_one(n: int) -> None:
            for i in range(n):
                await q.add({"type": "t", "identifyTag": f"tag-{i % 50}", "payload": i})

        for label, producers in (("add_1", 1), ("add_20", 20)):
            began = time.perf_counter()
            await asyncio.gather(*(one_by_one(tasks // producers) for _ in range(producers)))
            rates[label] = tasks / (time.perf_counter() - began)
        batch = [{"type": "t", "identifyTag": f"tag-{i % 50}", "payload": i} for i in range(tasks)]
        began = time.perf_counter()
        await q.add_bulk(batch)
        rates["add_bulk"] = tasks / (time.perf_counter() - began)
    return rates


def _replica_of(master: RedisServer, replica: RedisServer) -> None:
    with redis.Redis(port=replica.port, decode_responses=True) as r:
        r.execute_command("REPLICAOF", "127.0.0.1", str(master.port))
        deadline = time.monotonic() + 10
        while r.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.05)


async def run(tasks: int, rounds: int) -> dict[str, Any]:
    master, replica = RedisServer().start(), RedisServer().start()
    try:
        _replica_of(master, replica)
        results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
        for _ in range(rounds):
            for wait in (0, 1):
                results[wait].append(await _round(master.url, wait, tasks))
    finally:
        master.cleanup()
        replica.cleanup()
    medians = {
        f"wait={w}": {k: round(statistics.median(r[k] for r in rs)) for k in rs[0]}
        for w, rs in results.items()
    }
    ratio = {k: round(medians["wait=1"][k] / medians["wait=0"][k], 2) for k in medians["wait=0"]}
    return {"tasks": tasks, "rounds": rounds, "adds_per_s": medians, "ratio_wait1_to_wait0": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    json.dump(asyncio.run(run(args.tasks, args.rounds)), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
