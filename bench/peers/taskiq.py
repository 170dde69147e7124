"""taskiq with taskiq-redis's ``RedisStreamBroker`` (its README's broker, with acknowledgements):
``taskiq worker bench.peers.taskiq:broker --workers 1 --max-async-tasks 20``."""

from __future__ import annotations

import time

from taskiq_redis import RedisStreamBroker

from . import BIN, WORKERS, AsyncSystem, redis_url
from .probe import record

broker = RedisStreamBroker(url=redis_url())


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    record(i, time.monotonic())


class Adapter(AsyncSystem):
    name = "taskiq"
    distributions = ("taskiq", "taskiq-redis")
    settings = (
        f"`--workers 1 --max-async-tasks {WORKERS}` (its default is 2 processes); "
        "`RedisStreamBroker`, no result backend; log level WARNING"
    )
    processes = f"1 process, {WORKERS} async tasks"

    async def open(self) -> None:
        await broker.startup()

    async def reset(self) -> None:
        # The consumer group lives in Redis: a flush removes it, and startup declares it.
        await broker.startup()

    async def aclose(self) -> None:
        await broker.shutdown()

    def worker_command(self, index: int) -> list[str]:
        return [
            str(BIN / "taskiq"), "worker", f"{__name__}:broker", "--workers", "1",
            "--max-async-tasks", str(WORKERS), "--log-level", "WARNING",
        ]  # fmt: skip

    async def send(self, i: int) -> None:
        await noop.kiq(i)
