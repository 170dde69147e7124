"""FastAPI glue: dependencies that hand route functions the queue and worker services.

The only module that imports FastAPI. ``FastAPI(lifespan=aq.lifespan)`` starts the queues and
yields ``{"affinity_queue": aq}`` as lifespan state; Starlette copies that state into every
request's ``request.state``, where these dependencies find it. No global registry is involved, so
several apps (or tests) in one process each see their own :class:`AffinityQueue`.

::

    @app.post("/tasks")
    async def add(task: Task, queue: QueueServiceDep) -> Job:
        return await queue.add(task)

    high_priority = Depends(get_queue("high-priority"))

To run the app's own start-up and shut-down code too, enter ``aq.lifespan`` inside the app's
lifespan and yield its state with the app's own (see the README, "Combining lifespans").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, status
from starlette.requests import HTTPConnection

from .core import DEFAULT_QUEUE, AffinityQueue
from .errors import LifecycleError, UnknownQueueError
from .queue import QueueService
from .worker import WorkerService

log = logging.getLogger("affinity_queue.fastapi")

S = TypeVar("S")

STATE_KEY = "affinity_queue"
"""The lifespan state key under which ``aq.lifespan`` yields the :class:`AffinityQueue`."""


async def get_affinity_queue(conn: HTTPConnection) -> AffinityQueue:
    """The :class:`AffinityQueue` that the app's lifespan started. Typed ``HTTPConnection``, not
    ``Request``, so that WebSocket routes can depend on it too."""
    aq = getattr(conn.state, STATE_KEY, None)
    if not isinstance(aq, AffinityQueue):
        raise LifecycleError(
            f"request.state has no {STATE_KEY!r}: create the app with "
            "FastAPI(lifespan=aq.lifespan), or yield the state of `async with aq.lifespan(app)` "
            "from your own lifespan, and run the app under a server that runs lifespans"
        )
    return aq


async def get_queue_service(conn: HTTPConnection) -> QueueService:
    """The default queue's producer side."""
    return (await get_affinity_queue(conn)).queue()


async def get_worker_service(conn: HTTPConnection) -> WorkerService:
    """The default queue's worker side (register handlers, see this process's worker ids)."""
    return (await get_affinity_queue(conn)).worker()


def get_queue(
    name: str = DEFAULT_QUEUE, aq: AffinityQueue | None = None
) -> Callable[[HTTPConnection], Awaitable[QueueService]]:
    """A dependency giving the :class:`QueueService` of the queue declared as ``name``.

    Pass the ``aq`` the app is built with to have an undeclared name raise
    :class:`UnknownQueueError` here, at import time. Without it the name is checked per request,
    and an undeclared one fails the request with a 500 whose detail lists the declared names.
    """
    _check(name, aq)

    async def dependency(conn: HTTPConnection) -> QueueService:
        return _named(await get_affinity_queue(conn), name, AffinityQueue.queue)

    dependency.__name__ = f"get_queue_{name}"
    return dependency


def get_worker(
    name: str = DEFAULT_QUEUE, aq: AffinityQueue | None = None
) -> Callable[[HTTPConnection], Awaitable[WorkerService]]:
    """Like :func:`get_queue`, for the :class:`WorkerService` of the queue ``name``."""
    _check(name, aq)

    async def dependency(conn: HTTPConnection) -> WorkerService:
        return _named(await get_affinity_queue(conn), name, AffinityQueue.worker)

    dependency.__name__ = f"get_worker_{name}"
    return dependency


def _check(name: str, aq: AffinityQueue | None) -> None:
    if aq is not None and name not in aq.names:
        raise UnknownQueueError(name, aq.names)


def _named(aq: AffinityQueue, name: str, get: Callable[[AffinityQueue, str], S]) -> S:
    try:
        return get(aq, name)
    except UnknownQueueError as e:
        # A programming error, but one whose fix the developer should read in the response.
        log.error("%s", e)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(e)) from e


AffinityQueueDep = Annotated[AffinityQueue, Depends(get_affinity_queue)]
QueueServiceDep = Annotated[QueueService, Depends(get_queue_service)]
WorkerServiceDep = Annotated[WorkerService, Depends(get_worker_service)]
