"""The fault layer: every script call of the model goes through it.

Per call it picks one of:
- ``ok``: the call as it is;
- ``lost``: Redis runs the call, its reply is lost, the client sends it again (same arguments, same
  request token) and the caller sees the second reply;
- ``twice``: the call reaches Redis twice (a retry racing a slow reply); the caller sees the first
  reply. For scripts whose repetition must change nothing, the queue's keys after the second run
  must equal those after the first (item 2 of the fault-harness issue);
- ``late``: like ``lost``, but the leader dispatches before the retry arrives;
- ``before``: the connection fails before the call reaches Redis (nothing happens);
- ``oom``: a window of calls that Redis answers with OOM (real: ``maxmemory 1`` with
  ``noeviction``, set around each call of the window); a refused call must have written nothing;
- ``readonly``: a window of calls answered READONLY. Simulated (the call is not sent and redis-py's
  ``ReadOnlyError`` is raised), because pointing the server at a replica would replace its data.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError

T = TypeVar("T")

Failure = (RedisConnectionError, OutOfMemoryError, ReadOnlyError)
"""What the fault layer makes a call raise: the caller treats the call as not done."""

SAME_AFTER_REPEAT = frozenset(
    {
        "add",
        "advance",
        "cancel",
        "delete_failed",
        "heartbeat",
        "pause",
        "register",
        "renew",
        "requeue_failed",
        "resign",
        "watch",
    }
)
"""Scripts whose second run with the same arguments must leave the keys as the first did. The
others (dispatch, reap, retire and deregister slices, elect's new term) are meant to do more
work when repeated: the invariants, checked after every step, judge them."""

MODES = ("ok", "lost", "twice", "late", "before", "oom", "readonly")


class Faults:
    """Wraps script calls; ``snapshot`` reads the queue's keys for the repeat and OOM checks."""

    def __init__(
        self,
        rng: random.Random,
        redis: aioredis.Redis,
        snapshot: Callable[[], Awaitable[dict[str, Any]]],
        rate: float,
        between: Callable[[], Awaitable[None]],
    ) -> None:
        self.rng = rng
        self.redis = redis
        self.snapshot = snapshot
        self.rate = rate
        self.between = between  # what happens between a call and its late retry
        self.window: tuple[str, int] | None = None  # ("oom" | "readonly", calls left)
        self.injected: Counter[str] = Counter()
        self.repeats_checked: Counter[str] = Counter()
        self.problems: list[str] = []

    def _pick(self) -> str:
        if self.window:
            mode, left = self.window
            self.window = (mode, left - 1) if left > 1 else None
            return mode
        if self.rng.random() >= self.rate:
            return "ok"
        mode = self.rng.choices(MODES[1:], (2, 3, 1, 1, 1, 1))[0]  # twice most: item 2's check
        if mode in ("oom", "readonly"):
            self.window = (mode, self.rng.randint(0, 3))
        return mode

    async def call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` (one script call, the same arguments each time) under a fault."""
        mode = self._pick()
        self.injected[mode] += 1
        match mode:
            case "ok":
                return await call()
            case "lost":
                with contextlib.suppress(Exception):  # the reply, error or not, never arrives
                    await call()
                return await call()
            case "late":
                with contextlib.suppress(Exception):
                    await call()
                await self.between()
                return await call()
            case "twice":
                result = await call()  # an error here means no second run: raise it
                before = await self.snapshot()
                with contextlib.suppress(Exception):
                    await call()
                if name in SAME_AFTER_REPEAT:
                    self.repeats_checked[name] += 1
                    after = await self.snapshot()
                    if diff := differences(before, after):
                        self.problems.append(f"{name} run twice changed {diff}")
                return result
            case "before":
                raise RedisConnectionError("fault layer: connection lost before the call")
            case "readonly":
                raise ReadOnlyError("fault layer: You can't write against a read only replica.")
            case _:
                before = await self.snapshot()
                await self.redis.config_set("maxmemory", 1)
                try:
                    return await call()
                except OutOfMemoryError:
                    after = await self.snapshot()
                    if diff := differences(before, after):
                        self.problems.append(f"{name} refused for OOM still wrote {diff}")
                    raise
                finally:
                    await self.redis.config_set("maxmemory", 0)


IGNORED = {
    # (key suffix, field): values that legitimately move between two runs.
    ("workers", None),  # lease expiries: heartbeat renews from Redis time
    ("leader", "heartbeat"),
}


EXPIRING = ":dedupe:"
"""Deduplication windows are short (200 ms here): one may end between two snapshots."""


def _ignored(key: str, field: str | None) -> bool:
    if field == "notify":  # watch lengthens a watch from Redis time
        return True
    return any(key.endswith(suffix) and f in (None, field) for suffix, f in IGNORED)


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Keys (and hash fields) that differ between two snapshots, minus the ones that may move."""
    out: dict[str, Any] = {}
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a == b or _ignored(key, None) or (b is None and EXPIRING in key):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = {
                f: (a.get(f), b.get(f))
                for f in a.keys() | b.keys()
                if a.get(f) != b.get(f) and not _ignored(key, f)
            }
            if fields:
                out[key] = fields
        else:
            out[key] = (a, b)
    return out
