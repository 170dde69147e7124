"""Riding out Redis faults: retry with backoff, and log once per change of state."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .acl import denial
from .cluster import CLUSTER_REFUSED
from .observability.logs import queue_log

T = TypeVar("T")

RedisTrouble: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    OSError,
    *CLUSTER_REFUSED,
)
"""Errors that mean "Redis is not reachable right now", as opposed to a bug or a bad reply; on a
cluster, also a slot in migration or a failover under way (some are no ``RedisError``)."""

RedisFault: tuple[type[BaseException], ...] = (*RedisTrouble, RedisError)
"""Everything a loop rides out by retrying: an unreachable Redis, and one that refuses
(OOM, READONLY after a failover, MISCONF, BUSY, ...), which a later attempt may get past."""

BACKOFF_CAP_S = 2.0


def fault_kind(e: BaseException) -> str:
    """A fault's state for the logs: "unavailable", or the refusal's error code (``OOM``,
    ``READONLY``, ...), so that one refusal is logged once however its message varies."""
    if isinstance(e, AuthenticationError):  # a ConnectionError, but no outage: say what it is
        return "authentication"
    if denial(e) is not None:
        return "acl"
    if isinstance(e, RedisTrouble):
        return "unavailable"
    words = str(e).split(maxsplit=1)
    code = words[0] if words and words[0].isupper() else ""
    return f"{type(e).__name__} {code}".strip()


class Connectivity:
    """Whether one queue's Redis works, as the loops of this process see it.

    All loops retry through it, so a fault is logged once when the first loop meets it (each
    kind of refusal once, with its traceback) and once when the last one gets through again,
    however many loops and retries there are.
    """

    def __init__(self, queue: str, log: logging.Logger, acl_rule: str = "") -> None:
        """``log``: where this queue's faults are reported (its records carry ``queue``)."""
        self.queue = queue
        self._acl_rule = acl_rule
        self._log = queue_log(log, queue)
        self._failing = 0
        self._reported: set[str] = set()

    async def retry(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        what: str,
        check: Callable[[], None] | None = None,
    ) -> T:
        """Run ``call`` until it succeeds, backing off while Redis is unreachable or refuses.

        ``check`` runs before every attempt and may raise to give up. Our own script errors
        (:class:`~affinity_queue.errors.ScriptError`) are answers, not faults: they propagate.
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
                except RedisFault as e:
                    if not failing:
                        failing = True
                        self._failing += 1
                    self._report(e, what)
                    await asyncio.sleep(delay_s * (0.5 + random.random()))
                    delay_s = min(delay_s * 2, BACKOFF_CAP_S)
        finally:
            if failing:
                self._failing -= 1
            # The fault is over when a call gets through and no loop still fails; a loop that
            # gave up (its term ended) does not end it, so one outage is reported once.
            if succeeded and self._failing == 0 and self._reported:
                self._reported.clear()
                self._log.info("queue %s: Redis is reachable again", self.queue)

    def _report(self, e: BaseException, what: str) -> None:
        kind = fault_kind(e)
        if kind in self._reported:
            return
        self._reported.add(kind)
        if kind == "authentication":
            self._log.error(
                "queue %s: Redis authentication failed (%s: %s); check REDIS_PASSWORD or the "
                "password in REDIS_URL; retrying",
                self.queue,
                what,
                e,
            )
        elif kind == "acl":
            self._log.error(
                "queue %s: Redis's ACL denies %s (%s); give the Redis user the queue's rule: "
                "ACL SETUSER <user> %s; retrying",
                self.queue,
                denial(e),
                what,
                self._acl_rule,
            )
        elif kind == "unavailable":
            self._log.warning(
                "queue %s: Redis unavailable (%s: %s); retrying with backoff", self.queue, what, e
            )
        else:
            self._log.error(
                "queue %s: Redis refused %s (%s: %s); retrying with backoff until it accepts",
                self.queue,
                what,
                type(e).__name__,
                e,
                exc_info=e,
            )
