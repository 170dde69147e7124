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

``install_exception_handlers(app)`` answers the queue's errors with HTTP statuses and one body
shape, ``{"error": <code>, "message": <text>, ...context}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.requests import HTTPConnection

from .core import DEFAULT_QUEUE, AffinityQueue
from .errors import (
    InvalidTaskError,
    LifecycleError,
    QueueUnavailableError,
    TagBacklogFullError,
    UnknownJobError,
    UnknownQueueError,
)
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
        log.error("%s", e, extra={"queue": name})
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(e)) from e


AffinityQueueDep = Annotated[AffinityQueue, Depends(get_affinity_queue)]
QueueServiceDep = Annotated[QueueService, Depends(get_queue_service)]
WorkerServiceDep = Annotated[WorkerService, Depends(get_worker_service)]


# -- exception handlers ------------------------------------------------------------------------
RETRY_AFTER_S = 1
"""The ``Retry-After`` of a 429 or a 503: the library's own retries already took REDIS_TIMEOUT."""


class ErrorBody(BaseModel):
    """The body of every error answer: a stable ``error`` code, a readable ``message``, and the
    context of the error (``field``; ``identifyTag`` and ``limit``; ``maybeWritten``; ``jobId``;
    ``detail`` for a request that failed FastAPI's validation)."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str


def error_response(
    status_code: int, error: str, message: str, *, retry_after: bool = False, **context: Any
) -> JSONResponse:
    """An error answer in the :class:`ErrorBody` shape (for the app's own errors too)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry_after else None
    body = {"error": error, "message": message, **context}
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)


async def _invalid_task(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidTaskError)
    return error_response(422, "invalid_task", str(exc), field=exc.field)


async def _tag_backlog_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TagBacklogFullError)
    return error_response(
        429,
        "tag_backlog_full",
        str(exc),
        retry_after=True,
        identifyTag=exc.identify_tag,
        limit=exc.limit,
    )


async def _queue_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueUnavailableError)
    # The details (the queue, Redis's address, the cause) go to the log, not to the client.
    log.warning("%s %s: %s", request.method, request.url.path, exc, extra={"queue": exc.queue})
    outcome = "the task may have been written" if exc.maybe_written else "nothing was written"
    return error_response(
        503,
        "queue_unavailable",
        f"the queue is unavailable; {outcome}",
        retry_after=True,
        maybeWritten=exc.maybe_written,
    )


async def _unknown_job(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownJobError)
    return error_response(404, "unknown_job", str(exc), jobId=exc.job_id)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's usual ``detail`` list, plus one readable line for people and logs."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    message = shown + ("; ..." if len(errors) > 5 else "")
    return error_response(422, "invalid_request", message, detail=errors)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job (never added, or its record expired)"},
    422: {"model": ErrorBody, "description": "The request or its task is invalid"},
    429: {"model": ErrorBody, "description": "The tag's backlog is full (MAX_PENDING_PER_TAG)"},
    503: {"model": ErrorBody, "description": "Redis is unavailable; retry after Retry-After"},
}
"""OpenAPI ``responses=`` entries for the answers :func:`install_exception_handlers` gives."""


def install_exception_handlers(app: FastAPI, *, request_validation: bool = True) -> None:
    """Answer the queue's errors in ``app`` with one body shape (:class:`ErrorBody`):

    ==========================  ====  =========================================================
    ``InvalidTaskError``        422   ``field``: the field that was refused
    ``TagBacklogFullError``     429   ``identifyTag``, ``limit``; ``Retry-After``
    ``QueueUnavailableError``   503   ``maybeWritten``; ``Retry-After``; the cause is logged
    ``UnknownJobError``         404   ``jobId``
    ``RequestValidationError``  422   ``detail``: FastAPI's list (``request_validation=False``
                                      keeps FastAPI's own answer)
    ==========================  ====  =========================================================
    """
    app.add_exception_handler(InvalidTaskError, _invalid_task)
    app.add_exception_handler(TagBacklogFullError, _tag_backlog_full)
    app.add_exception_handler(QueueUnavailableError, _queue_unavailable)
    app.add_exception_handler(UnknownJobError, _unknown_job)
    if request_validation:
        app.add_exception_handler(RequestValidationError, _invalid_request)
