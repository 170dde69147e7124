"""arq: worker ``arq bench.peers.arq.WorkerSettings``, ``max_jobs=20``.

arq 0.28 declares ``redis<6``; it is installed with ``--no-deps`` so that every system runs on
the same redis-py as affinity-queue (8.x), which it works with here.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from . import BIN, WORKERS, AsyncSystem, redis_url
from .probe import record

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
"""arq logs every job at INFO by default; the bench logs warnings only, as for every system."""


async def noop(ctx: dict[str, Any], i: int) -> None:
    record(i, time.monotonic())


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    max_jobs = WORKERS
    redis_settings = RedisSettings.from_dsn(redis_url())


class Adapter(AsyncSystem):
    name = "arq"
    distributions = ("arq",)
    settings = (
        f"`max_jobs={WORKERS}`; defaults otherwise (`poll_delay=0.5` s, results kept 1 h); "
        "log level WARNING"
    )
    pool: ArqRedis

    async def open(self) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def aclose(self) -> None:
        await self.pool.aclose()

    def worker_command(self, index: int) -> list[str]:
        return [
            str(BIN / "arq"),
            f"{__name__}.WorkerSettings",
            "--custom-log-dict",
            f"{__name__}.LOG_CONFIG",
        ]

    async def send(self, i: int) -> None:
        await self.pool.enqueue_job("noop", i)
