"""AffinityQueue: owns the Redis clients and the named queues, and their start and stop."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # older redis-py has no such notifications and always checks
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

from .errors import LifecycleError, UnknownQueueError
from .lua import Scripts
from .queue import QueueService
from .retry import Connectivity
from .scheduler import Scheduler
from .settings import QueueSettings
from .worker import WAIT_CAP_S, WorkerService

log = logging.getLogger("affinity_queue")

DEFAULT_QUEUE = "default"
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


class _State(Enum):
    CREATED = "created"
    STARTED = "started"
    CLOSED = "closed"


def connect(url: str, timeout_s: float = 2.0) -> tuple[Redis, Redis]:
    """A client for commands (``timeout_s`` each) and one for blocking waits (its socket timeout
    outlasts them).

    A command is retried once, at once, when its connection was found closed: that is what a
    pooled connection looks like after a Redis restart, and the command never reached the new
    server. Timeouts are not retried (the command may have run): our loops retry where that is
    safe, and producers get ``QueueUnavailableError`` with ``maybe_written``.
    """
    if url.startswith(MEMORY_SCHEME):
        return _connect_memory(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if MaintNotificationsConfig is not None:
        # Recent redis-py skips its check for stale pooled connections while these notifications
        # are "auto" (the default), so the first command after a Redis restart would fail on a
        # socket the server closed long ago; with them off, the pool reconnects before sending.
        common["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return (
        Redis.from_url(url, socket_timeout=timeout_s, **common),
        Redis.from_url(url, socket_timeout=WAIT_CAP_S + timeout_s, **common),
    )


MEMORY_SCHEME = "memory://"
_MEMORY_EXTRA = (
    "REDIS_URL={url} (embedded mode) needs the 'memory' extra: pip install 'affinity-queue[memory]'"
)
_memory_servers: dict[str, Any] = {}
"""One in-process store per ``memory://`` URL, shared by every client of this process (as one
Redis server would be), so a push by one client wakes another's blocking wait."""


def _connect_memory(url: str) -> tuple[Redis, Redis]:
    """Embedded mode: clients of an in-process fakeredis store that runs our Lua scripts."""
    try:
        from fakeredis import FakeServer
        from fakeredis.aioredis import FakeRedis
    except ImportError as e:
        raise ImportError(_MEMORY_EXTRA.format(url=url)) from e
    if importlib.util.find_spec("lupa") is None:  # fakeredis runs Lua scripts through lupa
        raise ImportError(_MEMORY_EXTRA.format(url=url))
    server = _memory_servers.get(url)
    if server is None:
        server = _memory_servers[url] = FakeServer(version=(7,))
        log.warning(
            "REDIS_URL=%s: embedded mode. Queues live in this process's memory (fakeredis): "
            "other processes cannot see them and every job is lost when it exits. "
            "For development and demos only; set REDIS_URL=redis://... in production.",
            url,
        )
    return (
        FakeRedis(server=server, version=(7,), decode_responses=True),
        FakeRedis(server=server, version=(7,), decode_responses=True),
    )


@dataclass(slots=True)
class _Queue:
    settings: QueueSettings
    redis: Redis
    blocking: Redis
    service: QueueService
    worker: WorkerService
    scheduler: Scheduler

    @classmethod
    def build(cls, name: str, settings: QueueSettings) -> _Queue:
        redis, blocking = connect(settings.resolved_redis_url, settings.redis_timeout_ms / 1000)
        scripts = Scripts(redis, settings.keys, name)
        net = Connectivity(name, log)
        return cls(
            settings,
            redis,
            blocking,
            QueueService(name, settings, redis, scripts),
            WorkerService(name, settings, redis, blocking, scripts, net),
            Scheduler(name, settings, redis, blocking, scripts, net),
        )


class AffinityQueue:
    """The entry point: ``AffinityQueue(QueueSettings())``, then ``async with`` or a lifespan.

    Named queues (the original's ``forFeature``) are declared with ``queues={"name": settings}``;
    each has its own settings, key names, scheduler and workers. Which parts run in this process
    follows each queue's ``APP_ROLE``.
    """

    def __init__(
        self,
        settings: QueueSettings | None = None,
        *,
        queues: Mapping[str, QueueSettings] | None = None,
    ) -> None:
        declared = {DEFAULT_QUEUE: settings or QueueSettings(), **(queues or {})}
        owner: dict[str, str] = {}
        for name, s in declared.items():
            # Every key of a queue carries {PENDING_QUEUE_NAME}: two queues sharing it would
            # share every key.
            if (other := owner.setdefault(s.pending_queue_name, name)) != name:
                raise ValueError(
                    f"queues {other!r} and {name!r} both use PENDING_QUEUE_NAME "
                    f"{s.pending_queue_name!r}: give each queue its own"
                )
        self._queues = {name: _Queue.build(name, s) for name, s in declared.items()}
        self._state = _State.CREATED
        self._closing: asyncio.Future[None] | None = None

    # -- access -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._queues)

    def _get(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise UnknownQueueError(name, self.names) from None

    def queue(self, name: str = DEFAULT_QUEUE) -> QueueService:
        return self._get(name).service

    def worker(self, name: str = DEFAULT_QUEUE) -> WorkerService:
        return self._get(name).worker

    def scheduler(self, name: str = DEFAULT_QUEUE) -> Scheduler:
        return self._get(name).scheduler

    def settings(self, name: str = DEFAULT_QUEUE) -> QueueSettings:
        return self._get(name).settings

    def handler(
        self, type: str, *, queue: str = DEFAULT_QUEUE, timeout_s: float | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the handler of ``type`` on ``queue``."""
        return self.worker(queue).handler(type, timeout_s=timeout_s)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state is not _State.CREATED:
            raise LifecycleError(f"AffinityQueue.start(): already {self._state.value}")
        self._state = _State.STARTED
        for name, q in self._queues.items():
            role = q.settings.app_role
            log.info(
                "queue %s: role %s, Redis %s, %d worker(s)",
                name,
                role.value,
                _redacted(q.settings.resolved_redis_url),
                q.settings.worker_count if role.works else 0,
            )
            if role.schedules:
                await q.scheduler.start()
            if role.works:
                await q.worker.start()

    async def aclose(self) -> None:
        """Graceful stop: workers finish (within the grace period) and hand back; leaders resign.

        Every queue stops taking tasks at once, then all of them drain together. Every step
        runs whatever an earlier one raised (a failed step is logged), so nothing of ours is
        left running; a second call waits for the first to finish.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        was_started = self._state is _State.STARTED
        self._state = _State.CLOSED
        if was_started:
            for q in self._queues.values():
                q.worker.begin_stop()
        await asyncio.gather(
            *(self._close_queue(name, q, was_started) for name, q in self._queues.items())
        )

    async def _close_queue(self, name: str, q: _Queue, was_started: bool) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [("producer", q.service.aclose)]
        if was_started:
            # The scheduler resigns while the workers drain: a successor takes over at once and
            # places the jobs our workers hand back.
            async def stop_both() -> None:
                await asyncio.gather(
                    _step(name, "scheduler", q.scheduler.stop),
                    _step(name, "workers", q.worker.stop),
                )

            steps.append(("roles", stop_both))
        steps += [("client", q.redis.aclose), ("blocking client", q.blocking.aclose)]
        for what, step in steps:
            await _step(name, what, step)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[dict[str, Any]]:
        """An ASGI lifespan: ``FastAPI(lifespan=aq.lifespan)``. Yields ``{"affinity_queue": self}``
        as lifespan state, which the FastAPI dependencies read from ``request.state``."""
        async with self:
            yield {"affinity_queue": self}


async def _step(queue: str, what: str, step: Callable[[], Awaitable[None]]) -> None:
    """One stop step; a failure is logged and the next step runs all the same."""
    try:
        await step()
    except Exception as e:
        log.error(
            "queue %s: stopping the %s failed; going on with the rest", queue, what, exc_info=e
        )


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
