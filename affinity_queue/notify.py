"""Waiters: futures for jobs somebody awaits, fed by one Pub/Sub subscription per queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from .aio import cancel_and_wait
from .observability.logs import queue_log
from .retry import RedisTrouble

log = logging.getLogger("affinity_queue")


class Waiters:
    """Resolves ``wait_for`` futures when the scripts publish a finished job's id.

    The subscription opens on first use and is confirmed before any job is watched, so a finish
    that happens right after the watch cannot be missed. If the reader ends for any reason (a
    broken connection, an error, aclose), every pending waiter gets an error rather than hang,
    and the next one subscribes again.
    """

    def __init__(self, redis: Redis, channel: str, queue: str) -> None:
        self._redis = redis
        self._channel = channel
        self._log = queue_log(log, queue)
        self._futures: dict[str, set[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def register(self, job_id: str) -> asyncio.Future[None]:
        await self._subscribe()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, set()).add(future)
        return future

    def unregister(self, job_id: str, future: asyncio.Future[None]) -> None:
        waiting = self._futures.get(job_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._futures[job_id]

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._reader is not None and not self._reader.done():
                return
            await self.aclose()  # the broken subscription, if any
            pubsub = self._redis.pubsub()
            await pubsub.subscribe(self._channel)
            while True:  # the confirmation: from here on, every publish reaches us
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    break
            self._pubsub = pubsub
            self._reader = asyncio.create_task(self._read(pubsub), name="aq-waiters")

    async def _read(self, pubsub: PubSub) -> None:
        error: BaseException = RedisConnectionError("the job notification subscription ended")
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self._resolve(message["data"], None)
        except Exception as e:
            error = e
            if not isinstance(e, RedisTrouble):
                self._log.error("job notifications on %s failed", self._channel, exc_info=e)
        finally:  # whatever ended the reader: nobody may wait for a message it cannot pass on
            for job_id in list(self._futures):
                self._resolve(job_id, error)

    def _resolve(self, job_id: str, error: BaseException | None) -> None:
        for future in self._futures.pop(job_id, ()):
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def aclose(self) -> None:
        if self._reader is not None:
            await cancel_and_wait([self._reader], logger=self._log)
        if self._pubsub is not None:
            with contextlib.suppress(*RedisTrouble):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        self._reader = self._pubsub = None
