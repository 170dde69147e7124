"""affinity-queue itself, driven like the peers: its own CLI runs the workers.

Worker side: ``affinity-queue worker bench.peers.affinity:aq``. Tasks are dealt over
``TAGS`` tags (``tenant-<id % TAGS>``), so every task goes through tag affinity, with the
default per-tag concurrency of 1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from affinity_queue import AffinityQueue, QueueService, QueueSettings

from . import BIN, QUEUE, WORKERS, AsyncSystem, redis_url
from .probe import record

TAGS = 1_000
MAX_BATCH = 10
MAX_BATCH_ENV = "BENCH_MAX_BATCH"
"""Overrides MAX_BATCH in the worker processes (W6 with a batch handler binds longer runs)."""
HOT_BATCH = 100
"""``max_size`` of the ``noop_batch`` batch handler (at most the MAX_BATCH in force)."""


def queue_settings(url: str) -> QueueSettings:
    """Our defaults, but 20 workers per process; no ``.env`` is read."""
    return QueueSettings(
        _env_file=None,
        redis_url=url,
        pending_queue_name=QUEUE,
        worker_queue_prefix=f"{QUEUE}-wq",
        worker_state_prefix=f"{QUEUE}-ws",
        worker_count=WORKERS,
        app_role="BOTH",
        max_batch_size=int(os.environ.get(MAX_BATCH_ENV, MAX_BATCH)),
    )


def build(url: str) -> AffinityQueue:
    queue = AffinityQueue(queue_settings(url))

    @queue.handler("noop")
    async def noop(payload: int) -> None:
        record(payload, time.monotonic())

    @queue.batch_handler("noop_batch", max_size=min(HOT_BATCH, queue.settings().max_batch_size))
    async def noop_batch(payloads: list[int]) -> list[None]:
        start = time.monotonic()
        for payload in payloads:
            record(payload, start)
        return [None] * len(payloads)

    return queue


def __getattr__(name: str) -> AffinityQueue:
    """The worker side, ``aq``: what ``affinity-queue worker bench.peers.affinity:aq`` runs;
    built on access so that the suite's process, which only produces, never creates it."""
    if name == "aq":
        return build(redis_url())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task(i: int, tag: str | None = None) -> dict[str, Any]:
    return {"type": "noop", "identifyTag": tag or f"tenant-{i % TAGS}", "payload": i}


class Adapter(AsyncSystem):
    name = "affinity-queue"
    distributions = ("affinity-queue", "redis", "hiredis")
    settings = (
        f"`WORKER_COUNT={WORKERS}`, `APP_ROLE=BOTH` in each process (one leads), "
        f"`MAX_BATCH_SIZE={MAX_BATCH}`, per-tag concurrency 1; tasks over {TAGS:,} tags"
    )
    keyed = "native (tags)"
    bulk = "`add_bulk`"

    aq: AffinityQueue
    queue: QueueService

    async def open(self) -> None:
        self.aq = build(self.url)  # the producer: never started, so it runs no worker
        self.queue = self.aq.queue()

    async def aclose(self) -> None:
        await self.aq.aclose()

    def worker_command(self, index: int) -> list[str]:
        return [str(BIN / "affinity-queue"), "worker", f"{__name__}:aq", "--log-level", "warning"]

    async def send(self, i: int) -> None:
        await self.queue.add(task(i))

    async def add_bulk(self, ids: Sequence[int]) -> None:
        await self.queue.add_bulk([task(i) for i in ids])

    async def add_keyed(self, chains: Sequence[Sequence[int]]) -> None:
        """Interleaved: the first task of every tag, then the second of every tag..."""
        longest = max(len(c) for c in chains)
        items = [
            task(chain[seq], f"key-{t}")
            for seq in range(longest)
            for t, chain in enumerate(chains)
            if seq < len(chain)
        ]
        await self.queue.add_bulk(items)
