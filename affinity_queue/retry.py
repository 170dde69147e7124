"""Riding out Redis outages: retry with backoff, and log once per change of state."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AuthenticationError, BusyLoadingError
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


class Connectivity:
    """Whether one queue's Redis answers, as the loops of this process see it.

    All loops retry through it, so an outage is logged once when the first loop fails and once
    when the last one gets through again, however many loops and retries there are.
    """

    def __init__(self, queue: str, log: logging.Logger) -> None:
        self.queue = queue
        self._log = log
        self._failing = 0

    async def retry(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        what: str,
        check: Callable[[], None] | None = None,
    ) -> T:
        """Run ``call`` until it succeeds, backing off while Redis is unreachable.

        ``check`` runs before every attempt and may raise to give up.
        """
        delay_s = 0.05
        failing = succeeded = False
        try:
            while True:
                if check:
                    check()
                try:
                    result = await call()
                    succeeded = True
                    return result
                except RedisTrouble as e:
                    if not failing:
                        failing = True
                        self._failing += 1
                        if self._failing == 1 and isinstance(e, AuthenticationError):
                            self._log.error(
                                "queue %s: Redis authentication failed (%s: %s); check "
                                "REDIS_PASSWORD or the password in REDIS_URL; retrying",
                                self.queue,
                                what,
                                e,
                            )
                        elif self._failing == 1:
                            self._log.warning(
                                "queue %s: Redis unavailable (%s: %s); retrying with backoff",
                                self.queue,
                                what,
                                e,
                            )
                    await asyncio.sleep(delay_s * (0.5 + random.random()))
                    delay_s = min(delay_s * 2, BACKOFF_CAP_S)
        finally:
            if failing:
                self._failing -= 1
                if self._failing == 0 and succeeded:
                    self._log.info("queue %s: Redis is reachable again", self.queue)
