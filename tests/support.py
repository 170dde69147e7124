"""Helpers shared by the engine tests: waiting with deadlines, recording runs, reading keys."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis

from affinity_queue import QueueService, QueueSettings, QueueStats

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``done`` holds; fail with the last value seen after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s; last: {value}"
        await asyncio.sleep(0.02)


async def drained(queue: QueueService, total: int, *, timeout_s: float = 30.0) -> QueueStats:
    """Wait until ``total`` jobs have finished (completed or failed)."""
    return await wait_for(
        queue.get_queue_stats,
        lambda s: s.completed + s.failed >= total,
        timeout_s=timeout_s,
        what=f"{total} jobs finished",
    )


def order_of(job_id: str) -> int:
    """The order number in a job id ``<order>-<token>``: jobs are added in this order."""
    return int(job_id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class Run:
    """One handler execution, as seen by the handler."""

    job_id: str
    tag: str
    worker: str
    payload: Any
    start: float
    end: float


class Interval(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


def overlaps(runs: Iterable[Interval]) -> int:
    """The most runs in progress at one instant (touching intervals do not overlap)."""
    runs = list(runs)
    # Ends sort before starts at the same instant.
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def streaks(runs: Iterable[Run]) -> list[tuple[str, int]]:
    """(worker, length) of each maximal run of consecutive executions on one worker."""
    ordered = sorted(runs, key=lambda r: r.start)
    return [(w, len(list(g))) for w, g in itertools.groupby(ordered, key=lambda r: r.worker)]


async def queue_keys(redis: Redis, settings: QueueSettings) -> set[str]:
    """Every key of the queue: they all carry its hash tag ``{name}`` (SCAN, never KEYS)."""
    pattern = "*" + settings.keys.base.replace("[", "\\[") + "*"
    return {k async for k in redis.scan_iter(match=pattern, count=1000)}


async def snapshot(redis: Redis, settings: QueueSettings) -> dict[str, Any]:
    """The queue's whole content, by key, for before/after comparisons."""
    out: dict[str, Any] = {}
    for key in sorted(await queue_keys(redis, settings)):
        kind = await redis.type(key)
        match kind:
            case "string":
                out[key] = await redis.get(key)
            case "hash":
                out[key] = await redis.hgetall(key)
            case "list":
                out[key] = await redis.lrange(key, 0, -1)
            case "zset":
                out[key] = await redis.zrange(key, 0, -1, withscores=True)
            case "set":
                out[key] = sorted(await redis.smembers(key))
            case _:
                out[key] = kind
    return out
