"""Background tasks: supervised while their queue runs, and stopped for sure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]
"""A logger, or a queue's adapter (observability.logs.queue_log) that adds its name."""

log = logging.getLogger("affinity_queue")

STOP_DEADLINE_S = 5.0
RESTART_MIN_S = 0.1
RESTART_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
"""A loop that ran this long before it failed again counts as recovered: its backoff starts
over and the failure is logged again."""


def supervise(
    body: Callable[[], Awaitable[None]],
    *,
    name: str,
    what: str,
    running: Callable[[], bool],
    logger: Log = log,
) -> asyncio.Task[None]:
    """Run ``body`` as the task ``name`` for as long as ``running()`` holds.

    An exception that escapes ``body`` (a bug, a fault nobody retried) is logged, with its
    traceback, once per kind of exception, and ``body`` runs again after a backoff; a ``body``
    that returns while ``running()`` still holds is logged and restarted the same way. So a
    background loop never ends, silently or not, while its queue runs. Cancellation stops it.
    """

    async def supervised() -> None:
        delay_s = RESTART_MIN_S
        last = ""
        while running():
            began = time.monotonic()
            error: Exception | None = None
            try:
                await body()
            except Exception as e:
                error = e
            if error is None and not running():
                return
            if time.monotonic() - began >= HEALTHY_AFTER_S:
                delay_s, last = RESTART_MIN_S, ""
            kind = "returned" if error is None else type(error).__qualname__
            if kind != last:
                if error is None:
                    logger.error("%s ended while its queue runs; restarting it", what)
                else:
                    logger.error("%s failed; restarting it with backoff", what, exc_info=error)
            last = kind
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESTART_MAX_S)

    return asyncio.create_task(supervised(), name=name)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, deadline_s: float = STOP_DEADLINE_S, logger: Log = log
) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again as long as they run.

    A single ``cancel()`` is not enough: redis-py can swallow a cancellation that arrives while
    it opens a connection, and the task runs on. Each round cancels what still runs; after
    ``deadline_s`` the stragglers are left behind with a warning rather than hanging shutdown.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.1, max(0.0, end - loop.time())))
        if pending and loop.time() >= end:
            logger.warning(
                "%d task(s) did not stop within %.1f s: %s",
                len(pending),
                deadline_s,
                ", ".join(t.get_name() for t in pending),
            )
            break
    for task in tasks:  # retrieved here, so none is reported as "never retrieved"
        if task.done() and not task.cancelled():
            task.exception()
