"""Raw redis-py round trips/s on this machine, in this run: the yardstick for every other figure.

The machines are shared and noisy; a queue's tasks/s means little alone, but tasks/s divided by
round trips/s measured minutes apart on the same machine says how many round trips a task costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

TRIVIAL_SCRIPT = "return 1"


async def _rate(op: Callable[[], Awaitable[object]], total: int, coroutines: int) -> float:
    """Calls/s of ``op`` when ``coroutines`` loops share ``total`` calls."""

    async def loop(n: int) -> None:
        for _ in range(n):
            await op()

    for _ in range(min(100, total)):  # connections open, script cached
        await op()
    per = total // coroutines
    start = time.perf_counter()
    await asyncio.gather(*(loop(per) for _ in range(coroutines)))
    return per * coroutines / (time.perf_counter() - start)


async def round_trips(url: str, *, total: int) -> dict[str, float]:
    """PING and a trivial EVALSHA, from 1 coroutine and from 20, through one client (its pool)
    configured like the library's: ``decode_responses=True``, hiredis when installed."""
    redis = Redis.from_url(url, decode_responses=True)
    script = redis.register_script(TRIVIAL_SCRIPT)
    try:
        return {
            "ping_1": await _rate(redis.ping, total // 2, 1),
            "ping_20": await _rate(redis.ping, total, 20),
            "evalsha_1": await _rate(script, total // 2, 1),
            "evalsha_20": await _rate(script, total, 20),
        }
    finally:
        await redis.aclose()
