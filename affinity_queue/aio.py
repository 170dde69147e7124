"""Stopping asyncio tasks for sure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("affinity_queue")

STOP_DEADLINE_S = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, deadline_s: float = STOP_DEADLINE_S
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
            log.warning(
                "%d task(s) did not stop within %.1f s: %s",
                len(pending),
                deadline_s,
                ", ".join(t.get_name() for t in pending),
            )
            break
    for task in tasks:  # retrieved here, so none is reported as "never retrieved"
        if task.done() and not task.cancelled():
            task.exception()
