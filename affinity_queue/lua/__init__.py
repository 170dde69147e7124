"""Loads the Lua scripts and gives each a typed Python method.

Each ``<operation>.lua`` is one atomic operation; ``_shared.lua`` is prepended to it so rules used
by several operations exist once. ``register_script`` caches the SHA and reloads the script after
``SCRIPT FLUSH`` or a Redis restart (``NOSCRIPT``), so callers never see either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..errors import (
    DataLostError,
    JobNotActiveError,
    LeaseLostError,
    NotLeaderError,
    ScriptCode,
    ScriptError,
)
from ..keys import QueueKeys

SCRIPT_NAMES = (
    "add",
    "advance",
    "deregister",
    "dispatch",
    "elect",
    "heartbeat",
    "reap",
    "register",
    "renew",
    "resign",
    "retire",
)


@cache
def script_source(name: str) -> str:
    """The text sent to Redis for one operation: the shared prelude, then the operation."""
    lua = files(__package__)
    return lua.joinpath("_shared.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class RawJob:
    """A job as a worker receives it from ``advance``."""

    id: str
    type: str
    identify_tag: str
    payload: str
    attempts: int


class Scripts:
    """One queue's scripts bound to one client. Negative codes become exceptions here only."""

    def __init__(self, redis: Redis, keys: QueueKeys, queue: str) -> None:
        self._keys = list(keys.script_keys)
        self._queue = queue
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    async def _call(self, name: str, *args: Any, worker_id: str = "") -> Any:
        result = await self._scripts[name](keys=self._keys, args=args)
        if isinstance(result, int) and result < 0:
            match result:
                case ScriptCode.LEASE_LOST:
                    raise LeaseLostError(worker_id)
                case ScriptCode.NOT_LEADER:
                    raise NotLeaderError()
                case ScriptCode.NOT_ACTIVE:
                    raise JobNotActiveError(worker_id)
                case ScriptCode.DATA_LOST:
                    raise DataLostError(self._queue)
                case _:
                    raise ScriptError(f"{name}: unexpected code {result}")
        return result

    async def add(self, entries: list[tuple[str, str, str, str]]) -> tuple[int, int]:
        """Enqueue ``(type, tag, tag id, payload JSON)`` entries.

        Returns the first job id (the others follow consecutively) and the Redis time in ms.
        """
        flat = [field for entry in entries for field in entry]
        first, now_ms = await self._call("add", len(entries), *flat)
        return int(first), int(now_ms)

    async def dispatch(self, fence: int, budget: int) -> tuple[int, bool]:
        placed, more = await self._call("dispatch", fence, budget)
        return int(placed), bool(more)

    async def advance(
        self, worker_id: str, finished: str, outcome: str, outcome_json: str, take_next: bool
    ) -> RawJob | None:
        result = await self._call(
            "advance",
            worker_id,
            finished,
            outcome,
            outcome_json,
            int(take_next),
            worker_id=worker_id,
        )
        if result == 0:
            return None
        job_id, type_, tag, payload, attempts = result
        return RawJob(job_id, type_, tag, payload, int(attempts))

    async def register(self, worker_id: str, lease_ms: int, host: str, pid: int, epoch: str) -> str:
        return str(await self._call("register", worker_id, lease_ms, host, pid, epoch))

    async def heartbeat(self, epoch: str, lease_ms: int, worker_ids: list[str]) -> list[str]:
        """Renews the leases; returns the ids whose lease was already gone."""
        return list(await self._call("heartbeat", epoch, lease_ms, *worker_ids))

    async def deregister(self, worker_id: str) -> int:
        return int(await self._call("deregister", worker_id, worker_id=worker_id))

    async def retire(self, worker_id: str) -> int:
        return int(await self._call("retire", worker_id, worker_id=worker_id))

    async def reap(self, fence: int, limit: int, orphans: list[str]) -> tuple[int, int]:
        workers, jobs = await self._call("reap", fence, limit, *orphans)
        return int(workers), int(jobs)

    async def elect(
        self,
        token: str,
        ttl_ms: int,
        node: str,
        host: str,
        pid: int,
        max_batch: int,
        concurrency: int,
        limits: dict[str, int],
    ) -> int:
        """Returns the new term's fencing number, or 0 when another node leads."""
        flat = [str(x) for pair in limits.items() for x in pair]
        return int(
            await self._call("elect", token, ttl_ms, node, host, pid, max_batch, concurrency, *flat)
        )

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return bool(await self._call("renew", token, ttl_ms))

    async def resign(self, token: str) -> bool:
        return bool(await self._call("resign", token))
