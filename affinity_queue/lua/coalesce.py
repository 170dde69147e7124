"""Coalesced: calls of one script made in the same event-loop turn share one round trip."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


class Coalesced:
    """Sends the calls of one script issued in the same event-loop turn as one pipeline.

    The workers of a process finish their jobs in the same turn (one reply wakes them all), so
    their ``advance`` calls go out together: one round trip for many workers instead of one each.
    Every call is still its own script run, atomic on its own; only the transport is shared.
    A missing script (``SCRIPT FLUSH``, a restart) is loaded and the affected calls sent again.
    """

    def __init__(self, redis: Redis, script: AsyncScript, keys: list[str]) -> None:
        self._redis = redis
        self._script = script
        self._keys = keys
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._flush)
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((args, future))
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)  # keep a reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run([args for args, _ in batch])
        except BaseException as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled; the call ran all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run(self, calls: list[tuple[Any, ...]], *, reloaded: bool = False) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(self._script.sha, len(self._keys), *self._keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing and not reloaded:
            await self._redis.script_load(self._script.script)
            again = await self._run([calls[i] for i in missing], reloaded=True)
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results
