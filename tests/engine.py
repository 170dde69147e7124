"""The queue's scripts driven by hand, without the Python runtime around them: one leader term,
workers registered by name, every step explicit. For tests that pin one script rule."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from affinity_queue import QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import AddOptions, RawJob, Scripts, TermConfig, new_token


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class Engine:
    """The queue's scripts driven by hand: one leader term, workers registered by name."""

    def __init__(self, client: aioredis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = settings.keys
        self.scripts = Scripts(client, settings.keys, "default")
        self.fence = 0

    async def elect(self, **config: Any) -> None:
        self.fence = await self.scripts.elect(
            "token", 30_000, "node", "host", 1, TermConfig(**config)
        )
        assert self.fence > 0

    async def register(self, *workers: str, lease_ms: int = 60_000) -> None:
        for w in workers:
            await self.scripts.register(w, lease_ms, "host", 1, "epoch")

    async def add(self, tag: str, n: int, options: AddOptions | None = None) -> list[str]:
        """Adds ``n`` jobs of ``tag`` whose payloads are 0..n-1; returns their ids."""
        entries = [("t", tag, tag_id(tag), str(i)) for i in range(n)]
        return (await self.scripts.add(new_token(), entries, options or AddOptions())).ids

    @contextlib.asynccontextmanager
    async def backlog(self) -> AsyncIterator[None]:
        """Tasks added inside wait for the next ``dispatch``: add places what it can at once
        (an idle worker), so a test that pins how dispatch shares a backlog pauses the queue
        while it builds one."""
        assert await self.redis.hget(self.keys.config, "paused") != "1"
        await self.scripts.pause(new_token(), True)
        try:
            yield
        finally:
            await self.scripts.pause(new_token(), False)

    async def take(self, worker: str, finished: RawJob | None = None) -> RawJob | None:
        """Complete ``finished`` (if any) and start the worker's next job."""
        if finished is None:
            return await self.scripts.advance(worker, "", "", "", True)
        return await self.scripts.advance(worker, finished.id, "completed", "null", True)

    async def dispatch(self) -> int:
        placed, _, _ = await self.scripts.dispatch(self.fence, 1000)
        return placed

    async def idle(self) -> list[Any]:
        return await self.redis.zrange(self.keys.queue_prefix + "idle", 0, -1)

    async def queued(self, worker: str) -> list[Any]:
        return await self.redis.lrange(self.keys.worker_queue(worker), 0, -1)

    async def worker_state(self, worker: str) -> dict[Any, Any]:
        return await self.redis.hgetall(self.keys.worker_state(worker))

    async def job(self, job_id: str) -> dict[Any, Any]:
        return await self.redis.hgetall(self.keys.job(job_id))
