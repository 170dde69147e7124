"""RQ: ``rq worker-pool -n 20``: 20 worker processes, each forking a work horse per job.

RQ runs one job at a time per process; its pool is its way to run 20 at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from redis import Redis
from rq import Queue
from rq.job import Job

from . import BIN, WORKERS, SyncSystem
from .probe import record


def noop(i: int) -> None:
    record(i, time.monotonic())


class Adapter(SyncSystem):
    name = "RQ"
    distributions = ("rq",)
    settings = (
        f"`rq worker-pool -n {WORKERS}` (default `Worker`: a fork per job); queue `default`; "
        "log level WARNING"
    )
    keyed = "`depends_on` chains"
    bulk = "`Queue.enqueue_many`"
    processes = f"a pool of {WORKERS} processes, 1 job at a time each"
    two_processes = f"its pool is already {WORKERS} processes"

    redis: Redis
    queue: Queue

    async def open(self) -> None:
        self.redis = Redis.from_url(self.url)
        self.queue = Queue(connection=self.redis)

    async def aclose(self) -> None:
        self.redis.close()

    def worker_command(self, index: int) -> list[str]:
        return [
            str(BIN / "rq"), "worker-pool", "--url", self.url, "--num-workers", str(WORKERS),
            "--logging-level", "WARNING", "default",
        ]  # fmt: skip

    def send(self, i: int) -> None:
        self.queue.enqueue(noop, i)

    async def add_bulk(self, ids: Sequence[int]) -> None:
        jobs = [Queue.prepare_data(noop, (i,)) for i in ids]
        await asyncio.to_thread(self.queue.enqueue_many, jobs)

    async def add_keyed(self, chains: Sequence[Sequence[int]]) -> None:
        """Each job depends on the one before it in its chain: RQ enqueues it when that one
        finishes. Sent interleaved, chain by chain at each position."""

        def run() -> None:
            previous: list[Job | None] = [None] * len(chains)
            for seq in range(max(len(c) for c in chains)):
                for t, chain in enumerate(chains):
                    if seq < len(chain):
                        previous[t] = self.queue.enqueue(noop, chain[seq], depends_on=previous[t])

        await asyncio.to_thread(run)
