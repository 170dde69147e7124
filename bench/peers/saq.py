"""SAQ (Redis queue): worker ``saq bench.peers.saq.settings``, concurrency 20."""

from __future__ import annotations

import time
from typing import Any

from saq import Queue

from . import BIN, WORKERS, AsyncSystem, redis_url
from .probe import record


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    record(i, time.monotonic())


def settings() -> dict[str, Any]:
    """The worker side (SAQ calls a callable settings object)."""
    return {"queue": Queue.from_url(redis_url()), "functions": [noop], "concurrency": WORKERS}


class Adapter(AsyncSystem):
    name = "SAQ"
    distributions = ("saq",)
    settings = f"`concurrency={WORKERS}`; queue `default`; defaults otherwise"

    queue: Queue

    async def open(self) -> None:
        self.queue = Queue.from_url(self.url)
        await self.queue.connect()

    async def aclose(self) -> None:
        await self.queue.disconnect()

    def worker_command(self, index: int) -> list[str]:
        return [str(BIN / "saq"), f"{__name__}.settings"]

    async def send(self, i: int) -> None:
        await self.queue.enqueue("noop", i=i)
