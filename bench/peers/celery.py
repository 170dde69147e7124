"""Celery with its Redis broker: ``celery worker --pool threads --concurrency 20``.

Celery's default pool forks processes; ``threads`` is its way to run 20 tasks in one process.
No result backend (Celery's default).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from celery import Celery, chain

from . import BIN, WORKERS, SyncSystem, redis_url
from .probe import record

app = Celery("bench", broker=redis_url())


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    record(i, time.monotonic())


class Adapter(SyncSystem):
    name = "Celery"
    distributions = ("celery", "kombu")
    settings = (
        f"`--pool threads --concurrency {WORKERS}`; Redis broker, no result backend, "
        "defaults otherwise (prefetch multiplier 4, gossip/mingle/heartbeat on)"
    )
    keyed = "chains (`chain` of immutable signatures)"
    processes = f"1 process, pool `threads`, concurrency {WORKERS}"

    app: Celery

    async def open(self) -> None:
        self.app = Celery("bench-producer", broker=self.url)

    async def reset(self) -> None:
        # Kombu remembers the queues it declared; after a flush it must declare them again.
        self.app.close()
        self.app = Celery("bench-producer", broker=self.url)

    async def aclose(self) -> None:
        self.app.close()

    def worker_command(self, index: int) -> list[str]:
        return [
            str(BIN / "celery"), "-A", __name__, "worker", "--pool", "threads",
            "--concurrency", str(WORKERS), "--hostname", f"bench{index}@%h",
            "--loglevel", "WARNING",
        ]  # fmt: skip

    def send(self, i: int) -> None:
        self.app.send_task("noop", args=(i,))

    async def add_keyed(self, chains: Sequence[Sequence[int]]) -> None:
        for ids in chains:
            chain(self.app.signature("noop", args=(i,), immutable=True) for i in ids).apply_async()
