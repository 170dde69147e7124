"""Riding out Redis outages: retry with backoff, and log once per change of state."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

RedisTrouble: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    OSError,
)
"""Errors that mean "Redis is not reachable right now", as opposed to a bug or a bad reply."""

BACKOFF_CAP_S = 2.0


async def resilient(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    log: logging.Logger,
    check: Callable[[], None] | None = None,
) -> T:
    """Run ``call`` until it succeeds, backing off while Redis is unreachable.

    Logs one warning when the outage starts and one info line when it ends, however many
    retries happen in between. ``check`` runs before every attempt and may raise to give up.
    """
    delay_s = 0.05
    failing = False
    while True:
        if check:
            check()
        try:
            result = await call()
        except RedisTrouble as e:
            if not failing:
                log.warning("%s: Redis unavailable (%s); retrying with backoff", what, e)
                failing = True
            await asyncio.sleep(delay_s * (0.5 + random.random()))
            delay_s = min(delay_s * 2, BACKOFF_CAP_S)
            continue
        if failing:
            log.info("%s: Redis is back", what)
        return result
