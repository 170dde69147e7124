"""Loads the Lua scripts and gives each a typed Python method.

Each ``<operation>.lua`` is one atomic operation; the parts of ``_shared.lua`` it uses are
prepended to it so rules used by several operations exist once. ``register_script`` caches the
SHA and reloads the script after ``SCRIPT FLUSH`` or a Redis restart (``NOSCRIPT``), so callers
never see either.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..errors import (
    ConfigMismatchError,
    DataLostError,
    JobNotActiveError,
    LeaseLostError,
    NotLeaderError,
    ReplicationTimeoutError,
    ScriptCode,
    ScriptError,
    TagBacklogFullError,
)
from ..keys import QueueKeys, lua_key_names, tag_from_id
from .coalesce import Coalesced
from .prelude import prune

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
    "progress",
    "reap",
    "register",
    "renew",
    "requeue_failed",
    "resign",
    "retire",
    "watch",
)


HEARTBEAT_SLICE = 50
"""Workers renewed per heartbeat call: keeps one call well under a millisecond or two."""


@cache
def script_source(name: str) -> str:
    """The text sent to Redis for one operation: the key names and shared definitions it uses
    (see prelude.py), then the operation."""
    lua = files(__package__)
    operation = lua.joinpath(f"{name}.lua").read_text()
    shared = prune(lua.joinpath("_shared.lua").read_text(), operation)
    return prune(lua_key_names(), shared + operation) + shared + operation


def new_token() -> str:
    """A request token: one per logical call, sent again by every retry of that call, so the
    scripts that must not apply twice recognise the retry (64 random bits: no two calls in a
    token's lifetime share one)."""
    return secrets.token_hex(8)


def job_id(order: int, token: str) -> str:
    """The id of a job: its order number and the token of the call that added it (see add.lua)."""
    return f"{order}-{token}"


RUN_ROW = 9
"""Values per job in a run's reply (advance.lua, run_row in _shared.lua)."""


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
    wait_ms: int = 0
    """From its add (or the end of its delay) to this start, in Redis time."""

    @classmethod
    def from_reply(cls, reply: list[Any]) -> RawJob:
        job_id, type_, tag, payload, attempts, max_attempts, backoff, timeout, wait = reply
        return cls(
            job_id,
            type_,
            tag,
            payload,
            int(attempts or 0),
            int(max_attempts or 1),
            int(backoff or 0),
            int(timeout or 0),
            int(wait),
        )


def carried_run(wake_up: str) -> list[RawJob]:
    """The run a worker's wake-up carries: dispatch started it when it bound the worker (a JSON
    array of advance's reply rows). A bare wake-up ('1', or 'stalled' from a heartbeat) carries
    none: the worker asks ``advance`` for its run."""
    if not wake_up.startswith("["):
        return []
    rows = json.loads(wake_up)
    return [RawJob.from_reply(rows[i : i + RUN_ROW]) for i in range(0, len(rows), RUN_ROW)]


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
    weight: float | None = None  # of the tasks' tags while they lead them; None = the leader's


@dataclass(frozen=True, slots=True)
class Durability:
    """REDIS_WAIT_REPLICAS: how many replicas must have an add, and for how long to wait."""

    replicas: int
    timeout_ms: int
    touch_key: str  # the queue's seq key: ``INCRBY 0`` on it is a write that changes nothing


@dataclass(frozen=True, slots=True)
class Added:
    ids: list[str]
    now_ms: int
    deduplicated: bool  # ids holds the one job the deduplication key admitted earlier
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
    weight: float = 1.0  # default weight of a tag
    rate: float = 0.0  # default rate limit, tasks started per second (0 = none)
    weights: dict[str, float] = field(default_factory=dict)  # tag id -> weight
    rates: dict[str, float] = field(default_factory=dict)  # tag id -> tasks/s


class Scripts:
    """One queue's scripts bound to one client. Negative codes become exceptions here only."""

    def __init__(self, redis: Redis, keys: QueueKeys, queue: str) -> None:
        self._keys = list(keys.script_keys)
        self._queue = queue
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        # The hot path: each worker's finish-and-take-next shares round trips with the others.
        self._advance = Coalesced(redis, self._scripts["advance"], self._keys)

    async def _call(self, name: str, *args: Any, worker_id: str = "") -> Any:
        result = await self._scripts[name](keys=self._keys, args=args)
        return self._check(name, result, worker_id)

    def _check(self, name: str, result: Any, worker_id: str) -> Any:
        if isinstance(result, list) and result and result[0] == ScriptCode.LAYOUT:
            raise ConfigMismatchError(self._queue, tuple(self._keys[1:]), tuple(result[1:3]))
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
        self,
        token: str,
        entries: list[tuple[str, str, str, str]],
        options: AddOptions = AddOptions(),
        wait: Durability | None = None,
    ) -> Added:
        """Enqueue ``(type, tag, tag id, payload JSON)`` entries as one call with ``token``
        (a retry with the same token adds nothing twice). With ``wait``, return only once that
        many replicas have the jobs; else raise :class:`ReplicationTimeoutError`."""
        flat = [field for entry in entries for field in entry]
        o = options
        call = self._call if wait is None else partial(self._durable, wait)
        reply = await call(
            "add",
            token,
            len(entries),
            o.max_attempts,
            o.backoff_ms,
            o.timeout_ms,
            o.delay_ms,
            o.run_at_ms,
            o.dedupe_key,
            o.dedupe_ttl_ms,
            o.max_pending_per_tag,
            "" if o.weight is None else repr(float(o.weight)),
            *flat,
        )
        if reply[0] == ScriptCode.TAG_FULL:
            raise TagBacklogFullError(tag_from_id(reply[1]), o.max_pending_per_tag)
        first, now_ms, deduplicated, due_ms = reply
        if deduplicated:
            return Added([str(first)], int(now_ms), True, 0)
        ids = [job_id(int(first) + i, token) for i in range(len(entries))]
        return Added(ids, int(now_ms), False, int(due_ms))

    async def _durable(self, wait: Durability, name: str, *args: Any) -> Any:
        """Run script ``name``, then ``WAIT`` on the same connection: WAIT counts the replicas
        that have that connection's writes. The ``INCRBY seq 0`` between them is a write that
        replicates even when the script wrote nothing (a retry that got the kept reply of a
        first call sent on another connection, a deduplicated add); replication keeps the
        master's order, so a replica that has it has every earlier write of the queue."""
        script = self._scripts[name]
        for reloaded in (False, True):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(self._keys), *self._keys, *args)
                pipe.incrby(wait.touch_key, 0)
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
                reply, touched, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and not reloaded:
                await self._redis.script_load(script.script)
                continue
            for result in (reply, touched, acked):
                if isinstance(result, Exception):
                    raise result
            checked = self._check(name, reply, "")
            full = isinstance(checked, list) and checked[0] == ScriptCode.TAG_FULL
            if not full and int(acked) < wait.replicas:
                raise ReplicationTimeoutError(
                    self._queue, int(acked), wait.replicas, wait.timeout_ms
                )
            return checked
        raise AssertionError("unreachable: the second pass returns or raises")

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
        """Finish the one active job ``finished`` (if any) and start the next one."""
        done = [(finished, outcome, outcome_json)] if finished else []
        jobs = await self.advance_run(
            worker_id, done, int(take_next), retry_delay_ms=retry_delay_ms, retry_order=retry_order
        )
        return jobs[0] if jobs else None

    async def advance_run(
        self,
        worker_id: str,
        done: Sequence[tuple[Any, ...]],
        take: int,
        *,
        batch_sizes: dict[str, int] | None = None,
        retry_delay_ms: int = 0,
        retry_order: str = "strict",
    ) -> list[RawJob]:
        """Finish the active run ``done`` — ``(id, outcome, JSON)`` for each of its jobs in
        order, outcome ``""`` for one not run, optionally with how many ms before this call it
        started and ended and the attempt it ran as (a repeat that finds a later attempt of
        the run is refused: JobNotActiveError) — and start the next run of up to ``take`` jobs
        (up to ``batch_sizes[type]`` jobs of that type when it starts with a batch type)."""
        pairs = [str(x) for item in sorted((batch_sizes or {}).items()) for x in item]
        flat = [x for entry in done for x in (*entry, "", "", "")[:6]]
        reply = await self._advance(
            worker_id, take, retry_delay_ms, retry_order, len(pairs) // 2, *pairs, *flat
        )
        result = self._check("advance", reply, worker_id)
        if result == 0:
            return []
        return [RawJob.from_reply(result[i : i + RUN_ROW]) for i in range(0, len(result), RUN_ROW)]

    async def cancel(self, token: str, job_id: str) -> str:
        return str(await self._call("cancel", token, job_id))

    async def watch(self, job_id: str, for_ms: int) -> str | None:
        """The job's final status ('' if unknown), or None: it will publish when it finishes
        within ``for_ms``."""
        result = await self._call("watch", job_id, for_ms)
        return None if result == 0 else str(result)

    async def pause(self, token: str, on: bool, tid: str = "") -> None:
        await self._call("pause", token, int(on), tid)

    async def progress(self, worker_id: str, job_id: str, value_json: str) -> bool:
        """Store a running job's progress; False when it is no longer this worker's active
        job (nothing written)."""
        return bool(await self._call("progress", worker_id, job_id, value_json))

    async def requeue_failed(self, token: str, job_id: str) -> bool:
        return bool(await self._call("requeue_failed", token, job_id))

    async def delete_failed(self, token: str, job_id: str) -> bool:
        return bool(await self._call("delete_failed", token, job_id))

    async def register(self, worker_id: str, lease_ms: int, host: str, pid: int, epoch: str) -> str:
        """Returns the data set's epoch id; raises ConfigMismatchError when the queue's live
        processes use other worker prefixes."""
        (epoch,) = await self._call("register", worker_id, lease_ms, host, pid, epoch)
        return str(epoch)

    async def heartbeat(
        self, epoch: str, lease_ms: int, worker_ids: list[str]
    ) -> tuple[list[str], list[str]]:
        """Renews the leases, HEARTBEAT_SLICE workers per call (a process may run 1,000);
        returns the ids whose lease was already gone, and the ids of active jobs whose
        cancellation was requested."""
        lost: list[str] = []
        cancel: list[str] = []
        for i in range(0, len(worker_ids), HEARTBEAT_SLICE):
            gone, flagged = await self._call(
                "heartbeat", epoch, lease_ms, *worker_ids[i : i + HEARTBEAT_SLICE]
            )
            lost += gone
            cancel += flagged
        return lost, cancel

    async def deregister(
        self, worker_id: str, budget: int, unstarted: bool = False
    ) -> tuple[int, bool, list[str]]:
        """Hands back up to ``budget`` jobs; returns (jobs handed back, worker gone, the ids of
        the first ten). ``unstarted``: no job of its active run has started (its attempt is
        taken back)."""
        flag = "1" if unstarted else ""
        n, gone, ids = await self._call("deregister", worker_id, budget, flag, worker_id=worker_id)
        return int(n), bool(gone), list(ids)

    async def retire(self, worker_id: str, budget: int) -> tuple[int, bool]:
        """Hands back up to ``budget`` queued jobs; returns (jobs handed back, queue empty)."""
        n, empty = await self._call("retire", worker_id, budget, worker_id=worker_id)
        return int(n), bool(empty)

    async def reap(self, fence: int, budget: int) -> tuple[int, int, bool, list[str]]:
        """Returns (workers recovered, jobs handed back, more expired workers left, the ids of
        the first ten jobs handed back)."""
        workers, jobs, more, ids = await self._call("reap", fence, budget)
        return int(workers), int(jobs), bool(more), list(ids)

    async def elect(
        self, token: str, ttl_ms: int, node: str, host: str, pid: int, config: TermConfig
    ) -> int:
        """Returns the new term's fencing number, or 0 when another node leads; raises
        ConfigMismatchError when the queue's live processes use other worker prefixes."""
        c = config
        parts = [
            [str(x) for pair in sorted(m.items()) for x in pair]
            for m in (c.limits, _reprs(c.weights), _reprs(c.rates))
        ]
        flat = [x for part in parts for x in part]
        digest = hashlib.sha1("\n".join(" ".join(p) for p in parts).encode()).hexdigest()
        term: tuple[Any, ...] = (token, ttl_ms, node, host, pid, c.max_batch, c.concurrency)
        term += (c.keep_completed, c.completed_ttl_ms, c.keep_failed, c.failed_ttl_ms, digest)
        defaults = (repr(float(c.weight)), repr(float(c.rate)))
        # Most terms keep the last one's per-tag settings: they travel only when the script asks.
        fence = await self._scripts["elect"](keys=self._keys, args=(*term, 0, *defaults, 0, 0))
        if fence == ScriptCode.NEED_LIMITS:
            counts = (len(parts[0]) // 2, len(parts[1]) // 2)
            args = (*term, 1, *defaults, *counts, *flat)
            fence = await self._scripts["elect"](keys=self._keys, args=args)
        return int(self._check("elect", fence, ""))

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return bool(await self._call("renew", token, ttl_ms))

    async def resign(self, token: str) -> bool:
        return bool(await self._call("resign", token))


def _reprs(values: dict[str, float]) -> dict[str, str]:
    """Numbers as the text Lua reads back exactly (``repr`` of a float round-trips)."""
    return {k: repr(float(v)) for k, v in values.items()}
