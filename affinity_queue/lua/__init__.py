"""Loads the Lua scripts and gives each a typed Python method.

Each ``<operation>.lua`` is one atomic operation; ``_shared.lua`` is prepended to it so rules used
by several operations exist once. ``register_script`` caches the SHA and reloads the script after
``SCRIPT FLUSH`` or a Redis restart (``NOSCRIPT``), so callers never see either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    TagBacklogFullError,
)
from ..keys import QueueKeys, lua_key_names, tag_from_id
from .coalesce import Coalesced

SCRIPT_NAMES = (
    "add",
    "advance",
    "cancel",
    "delete_failed",
    "deregister",
    "dispatch",
    "elect",
    "heartbeat",
    "pause",
    "reap",
    "register",
    "renew",
    "requeue_failed",
    "resign",
    "retire",
    "watch",
)


@cache
def script_source(name: str) -> str:
    """The text sent to Redis for one operation: the key names, the shared prelude, then the
    operation."""
    lua = files(__package__)
    return (
        lua_key_names()
        + lua.joinpath("_shared.lua").read_text()
        + lua.joinpath(f"{name}.lua").read_text()
    )


@dataclass(frozen=True, slots=True)
class RawJob:
    """A job as a worker receives it from ``advance``."""

    id: str
    type: str
    identify_tag: str
    payload: str
    attempts: int
    max_attempts: int
    backoff_ms: int
    timeout_ms: int

    @classmethod
    def from_reply(cls, reply: list[Any]) -> RawJob:
        job_id, type_, tag, payload, attempts, max_attempts, backoff, timeout = reply
        return cls(
            job_id,
            type_,
            tag,
            payload,
            int(attempts),
            int(max_attempts or 1),
            int(backoff or 0),
            int(timeout or 0),
        )


@dataclass(frozen=True, slots=True)
class AddOptions:
    """Per-call options of ``add``; times in ms, relative to Redis's clock."""

    max_attempts: int = 1
    backoff_ms: int = 1000
    timeout_ms: int = 0
    delay_ms: int = 0
    run_at_ms: int = 0  # since the epoch; wins over delay_ms
    dedupe_key: str = ""  # hex-encoded
    dedupe_ttl_ms: int = 0
    max_pending_per_tag: int = 0


@dataclass(frozen=True, slots=True)
class Added:
    first_id: int
    now_ms: int
    deduplicated: bool
    due_ms: int  # 0 = due now


@dataclass(frozen=True, slots=True)
class TermConfig:
    """The settings a leader installs for its term: every process schedules by them."""

    max_batch: int
    concurrency: int = 1
    keep_completed: int = 100_000
    completed_ttl_ms: int = 86_400_000
    keep_failed: int = 100_000
    failed_ttl_ms: int = 604_800_000
    limits: dict[str, int] = field(default_factory=dict)  # tag id -> concurrency limit


class Scripts:
    """One queue's scripts bound to one client. Negative codes become exceptions here only."""

    def __init__(self, redis: Redis, keys: QueueKeys, queue: str) -> None:
        self._keys = list(keys.script_keys)
        self._queue = queue
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        # The hot path: each worker's finish-and-take-next shares round trips with the others.
        self._advance = Coalesced(redis, self._scripts["advance"], self._keys)

    async def _call(self, name: str, *args: Any, worker_id: str = "") -> Any:
        result = await self._scripts[name](keys=self._keys, args=args)
        return self._check(name, result, worker_id)

    def _check(self, name: str, result: Any, worker_id: str) -> Any:
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

    async def add(
        self, entries: list[tuple[str, str, str, str]], options: AddOptions = AddOptions()
    ) -> Added:
        """Enqueue ``(type, tag, tag id, payload JSON)`` entries; ids follow the first one."""
        flat = [field for entry in entries for field in entry]
        o = options
        reply = await self._call(
            "add",
            len(entries),
            o.max_attempts,
            o.backoff_ms,
            o.timeout_ms,
            o.delay_ms,
            o.run_at_ms,
            o.dedupe_key,
            o.dedupe_ttl_ms,
            o.max_pending_per_tag,
            *flat,
        )
        if int(reply[0]) == ScriptCode.TAG_FULL:
            raise TagBacklogFullError(tag_from_id(reply[1]), o.max_pending_per_tag)
        first, now_ms, deduplicated, due_ms = reply
        return Added(int(first), int(now_ms), bool(deduplicated), int(due_ms))

    async def dispatch(self, fence: int, budget: int) -> tuple[int, bool, int]:
        """Returns (placed, more work waiting, ms until the next delayed job or held tag is due,
        or -1 when none is)."""
        placed, more, next_due_ms = await self._call("dispatch", fence, budget)
        return int(placed), bool(more), int(next_due_ms)

    async def advance(
        self,
        worker_id: str,
        finished: str,
        outcome: str,
        outcome_json: str,
        take_next: bool,
        retry_delay_ms: int = 0,
        retry_order: str = "strict",
    ) -> RawJob | None:
        reply = await self._advance(
            worker_id,
            finished,
            outcome,
            outcome_json,
            int(take_next),
            retry_delay_ms,
            retry_order,
        )
        result = self._check("advance", reply, worker_id)
        return None if result == 0 else RawJob.from_reply(result)

    async def cancel(self, job_id: str) -> str:
        return str(await self._call("cancel", job_id))

    async def watch(self, job_id: str, for_ms: int) -> str | None:
        """The job's final status ('' if unknown), or None: it will publish when it finishes
        within ``for_ms``."""
        result = await self._call("watch", job_id, for_ms)
        return None if result == 0 else str(result)

    async def pause(self, on: bool, tid: str = "") -> None:
        await self._call("pause", int(on), tid)

    async def requeue_failed(self, job_id: str) -> bool:
        return bool(await self._call("requeue_failed", job_id))

    async def delete_failed(self, job_id: str) -> bool:
        return bool(await self._call("delete_failed", job_id))

    async def register(self, worker_id: str, lease_ms: int, host: str, pid: int, epoch: str) -> str:
        return str(await self._call("register", worker_id, lease_ms, host, pid, epoch))

    async def heartbeat(
        self, epoch: str, lease_ms: int, worker_ids: list[str]
    ) -> tuple[list[str], list[str]]:
        """Renews the leases; returns the ids whose lease was already gone, and the ids of
        active jobs whose cancellation was requested."""
        lost, cancel = await self._call("heartbeat", epoch, lease_ms, *worker_ids)
        return list(lost), list(cancel)

    async def deregister(self, worker_id: str) -> int:
        return int(await self._call("deregister", worker_id, worker_id=worker_id))

    async def retire(self, worker_id: str) -> int:
        return int(await self._call("retire", worker_id, worker_id=worker_id))

    async def reap(self, fence: int, limit: int, orphans: list[str]) -> tuple[int, int]:
        workers, jobs = await self._call("reap", fence, limit, *orphans)
        return int(workers), int(jobs)

    async def elect(
        self, token: str, ttl_ms: int, node: str, host: str, pid: int, config: TermConfig
    ) -> int:
        """Returns the new term's fencing number, or 0 when another node leads."""
        c = config
        flat = [str(x) for pair in c.limits.items() for x in pair]
        return int(
            await self._call(
                "elect",
                token,
                ttl_ms,
                node,
                host,
                pid,
                c.max_batch,
                c.concurrency,
                c.keep_completed,
                c.completed_ttl_ms,
                c.keep_failed,
                c.failed_ttl_ms,
                *flat,
            )
        )

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return bool(await self._call("renew", token, ttl_ms))

    async def resign(self, token: str) -> bool:
        return bool(await self._call("resign", token))
