"""AffinityQueue: owns the Redis clients and the named queues, and their start and stop."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # older redis-py has no such notifications and always checks
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

from pydantic import JsonValue

from .acl import acl_rule, denial
from .cluster import connect_cluster, is_cluster_url, parse_cluster_url
from .connections import aclose_client, pool_factory, tls_options
from .errors import AclDeniedError, LifecycleError, RoleError, UnknownQueueError
from .lua import Scripts
from .observability import MetricsRecorder, TraceRecorder
from .periodic import Missed, Schedule, check_task, schedule
from .queue import QueueService
from .retry import Connectivity
from .scheduler import Scheduler
from .server import check_server
from .settings import QueueSettings, Role
from .worker import WAIT_CAP_S, Middleware, WorkerService

log = logging.getLogger("affinity_queue")

DEFAULT_QUEUE = "default"
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
HookT = TypeVar("HookT", bound=Callable[..., Any])


class _State(Enum):
    CREATED = "created"
    STARTED = "started"
    CLOSED = "closed"


SCHEDULER_COMMANDS = 2
"""Commands a scheduler has in flight at once: its lease renewal and its dispatch loop."""

_OWN_OPTIONS = {
    "socket_timeout": "set REDIS_TIMEOUT; blocking waits add their own wait to it",
    "socket_connect_timeout": "connecting gives up after 2 s",
    "max_connections": "set REDIS_MAX_CONNECTIONS; waits get pools sized from WORKER_COUNT",
    "timeout": "set REDIS_POOL_TIMEOUT",
    "retry_on_timeout": "a command that timed out may have run, so it is never re-sent",
    "retry_on_error": "only commands that never reached Redis are re-sent",
    "decode_responses": "replies are always decoded",
}
"""Connection options the library sets itself, and why a REDIS_URL query cannot change them:
``?socket_timeout=1`` would cut every idle blocking wait short."""


def _ignored_url_options(url: str) -> list[tuple[str, str]]:
    """The ``name=value`` query options of ``url`` that :func:`connect` overrides, each with
    what to do instead."""
    query = parse_qs(urlsplit(url).query)
    return [
        (f"{name}={query[name][0]}", why) for name, why in _OWN_OPTIONS.items() if name in query
    ]


def connect(
    url: str,
    timeout_s: float = 2.0,
    *,
    commands: int,
    waits: int,
    pool_timeout_s: float,
    home_key: str = "",
    own: Mapping[str, Any] | None = None,
) -> tuple[Redis, Redis]:
    """A client for commands (``timeout_s`` each, at most ``commands`` at once) and one for
    ``waits`` blocking waits at once (its socket timeout outlasts them).

    A ``redis+cluster://`` URL gives Redis Cluster clients (cluster.py) that send keyless
    commands to the master of ``home_key``'s slot.

    Both pools make a caller wait up to ``pool_timeout_s`` for a free connection rather than
    fail. Our options win over the URL's (see ``_OWN_OPTIONS``).

    A command is retried once, at once, when its connection was found closed: that is what a
    pooled connection looks like after a Redis restart, and the command never reached the new
    server. Timeouts are not retried (the command may have run): our loops retry where that is
    safe, and producers get ``QueueUnavailableError`` with ``maybe_written``.

    ``own``: connection options from settings (TLS files, ACL user), winning over the URL's.
    A Sentinel URL gets pools that find the master through the Sentinels (see connections.py).
    """
    if url.startswith(MEMORY_SCHEME):
        return _connect_memory(url)
    seeds, single_url = parse_cluster_url(url) if is_cluster_url(url) else ([], url)
    pool_class, url_options = pool_factory(single_url, dict(own or {}))
    options: dict[str, Any] = {
        **{k: v for k, v in url_options.items() if k not in _OWN_OPTIONS},
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "timeout": pool_timeout_s,
    }
    if MaintNotificationsConfig is not None:
        # Recent redis-py skips its check for stale pooled connections while these notifications
        # are "auto" (the default), so the first command after a Redis restart would fail on a
        # socket the server closed long ago; with them off, the pool reconnects before sending.
        options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)

    def client(socket_timeout_s: float, max_connections: int) -> Redis:
        if seeds:
            return connect_cluster(
                seeds,
                options,
                home_key=home_key,
                socket_timeout_s=socket_timeout_s,
                max_connections=max_connections,
                pool_timeout_s=pool_timeout_s,
            )
        pool = pool_class(
            **options, socket_timeout=socket_timeout_s, max_connections=max_connections
        )
        return Redis.from_pool(pool)

    return client(timeout_s, commands), client(WAIT_CAP_S + timeout_s, waits)


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


@dataclass(frozen=True, slots=True)
class _Clients:
    """One start's clients of a queue. Producers and workers share the command pool; the
    workers' waits and the scheduler have pools of their own, sized to what they hold at once,
    so no burst of producers or crowd of idle workers can starve the leader."""

    redis: Redis
    waits: Redis
    scripts: Scripts
    leader: Redis
    leader_waits: Redis
    leader_scripts: Scripts

    @classmethod
    def open(cls, name: str, s: QueueSettings) -> _Clients:
        open_ = partial(
            connect,
            s.resolved_redis_url,
            s.redis_timeout_ms / 1000,
            pool_timeout_s=s.redis_pool_timeout_ms / 1000,
            home_key=s.keys.queue_prefix,
            own=tls_options(s),
        )
        # Each worker slot holds one connection for its wait; a scheduler waits on one.
        redis, waits = open_(commands=s.redis_max_connections, waits=s.worker_count)
        leader, leader_waits = open_(commands=SCHEDULER_COMMANDS, waits=1)
        return cls(
            redis,
            waits,
            Scripts(redis, s.keys, name),
            leader,
            leader_waits,
            Scripts(leader, s.keys, name),
        )

    async def aclose(self) -> None:
        for client in (self.redis, self.waits, self.leader, self.leader_waits):
            await aclose_client(client)


@dataclass(slots=True)
class _Queue:
    name: str
    settings: QueueSettings
    clients: _Clients
    service: QueueService
    worker: WorkerService
    scheduler: Scheduler

    @classmethod
    def build(cls, name: str, settings: QueueSettings) -> _Queue:
        for option, why in _ignored_url_options(settings.resolved_redis_url):
            log.warning(
                "queue %s: REDIS_URL sets %s, which is ignored: %s",
                name,
                option,
                why,
                extra={"queue": name},
            )
        c = _Clients.open(name, settings)
        net = Connectivity(name, log, acl_rule(settings))
        return cls(
            name,
            settings,
            c,
            QueueService(name, settings, c.redis, c.scripts),
            WorkerService(name, settings, c.redis, c.waits, c.scripts, net),
            Scheduler(name, settings, c.leader, c.leader_waits, c.leader_scripts, net),
        )

    async def start_checks(self) -> None:
        """The start checks (server version, eviction policy); an ACL refusal of what they
        read raises :class:`AclDeniedError` naming the command and the rule."""
        if self.settings.resolved_redis_url.startswith(MEMORY_SCHEME):
            return
        try:
            await check_server(self.name, self.clients.redis, self.settings)
            await self.worker.check_layout()
        except ResponseError as e:
            if (denied := denial(e)) is None:
                raise
            raise AclDeniedError(self.name, denied, acl_rule(self.settings)) from e

    def reconnect(self) -> None:
        """Fresh clients for a start after ``aclose()``: the closed ones are bound to the event
        loop that used them. Services, handlers and references to them stay."""
        self.clients = c = _Clients.open(self.name, self.settings)
        self.service._bind(c.redis, c.scripts)
        self.worker._bind(c.redis, c.waits, c.scripts)
        self.scheduler._bind(c.leader, c.leader_waits, c.leader_scripts)


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
        """The queue's worker side; :class:`RoleError` where APP_ROLE=PRODUCER (no workers)."""
        q = self._get(name)
        if q.settings.app_role is Role.PRODUCER:
            raise RoleError(name, q.settings.app_role.value, "workers")
        return q.worker

    def scheduler(self, name: str = DEFAULT_QUEUE) -> Scheduler:
        return self._get(name).scheduler

    def settings(self, name: str = DEFAULT_QUEUE) -> QueueSettings:
        return self._get(name).settings

    def handler(
        self, type: str, *, queue: str = DEFAULT_QUEUE, timeout_s: float | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the handler of ``type`` on ``queue``.

        Any role may declare handlers (an API and its workers import the same module); only the
        processes whose APP_ROLE runs workers run them."""
        return self._get(queue).worker.handler(type, timeout_s=timeout_s)

    def batch_handler(
        self,
        type: str,
        *,
        max_size: int,
        queue: str = DEFAULT_QUEUE,
        timeout_s: float | None = None,
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the batch handler of ``type`` on ``queue``: one
        call gets up to ``max_size`` queued tasks of one tag (see
        :meth:`WorkerService.register_batch_handler`)."""
        return self._get(queue).worker.batch_handler(type, max_size=max_size, timeout_s=timeout_s)

    def periodic(
        self,
        cron: str | None = None,
        *,
        type: str,
        identify_tag: str,
        payload: JsonValue = None,
        every_s: float | None = None,
        tz: str = "UTC",
        name: str | None = None,
        missed: Missed | str = Missed.ONCE,
        misfire_grace_s: float | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout_s: float | None = None,
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a periodic task and register the decorated function as its handler::

            @aq.periodic("*/5 * * * *", type="sync-crm", identify_tag="crm", payload={...})
            async def sync_crm(payload: dict) -> None: ...

        The arguments are those of :meth:`add_periodic`; ``timeout_s`` is the handler's.
        """
        self.add_periodic(
            cron,
            type=type,
            identify_tag=identify_tag,
            payload=payload,
            every_s=every_s,
            tz=tz,
            name=name,
            missed=missed,
            misfire_grace_s=misfire_grace_s,
            queue=queue,
        )
        return self.handler(type, queue=queue, timeout_s=timeout_s)

    def add_periodic(
        self,
        cron: str | None = None,
        *,
        type: str,
        identify_tag: str,
        payload: JsonValue = None,
        every_s: float | None = None,
        tz: str = "UTC",
        name: str | None = None,
        missed: Missed | str = Missed.ONCE,
        misfire_grace_s: float | None = None,
        queue: str = DEFAULT_QUEUE,
    ) -> Schedule:
        """Have the queue's leader add ``Task(type, identify_tag, payload)`` once per tick.

        ``cron``: 5 fields, or 6 with seconds first, in the time zone ``tz``; or ``every_s``
        seconds (ticks at whole multiples of it since the epoch). ``name`` (default
        ``"<type>@<identify_tag>"``) identifies the schedule across restarts. ``missed``: what
        happens to ticks older than ``misfire_grace_s`` (default: twice ELECTION_LOCK_TTL +
        HEARTBEAT_INTERVAL, so a failover never misses one): ``"once"`` runs the newest once,
        ``"skip"`` drops them. Declare the same schedules in every process that may lead.
        Raises :class:`InvalidScheduleError` naming the schedule and the problem.
        """
        q = self._get(queue)
        name = name if name is not None else f"{type}@{identify_tag}"
        task = {"type": type, "identifyTag": identify_tag, "payload": payload}
        valid, payload_json = check_task(name, q.service._validate, task)
        declared = schedule(
            name,
            valid,
            payload_json,
            q.settings,
            cron=cron,
            every_s=every_s,
            tz=tz,
            missed=missed,
            misfire_grace_s=misfire_grace_s,
        )
        q.scheduler.periodic.declare(declared)
        return declared

    # -- hooks and instruments --------------------------------------------------------------
    def on_startup(self, fn: HookT | None = None, *, queue: str = DEFAULT_QUEUE) -> Any:
        """``@aq.on_startup``: run ``fn()`` before ``queue``'s workers start (in processes whose
        APP_ROLE works); a mapping it returns is merged into every handler's ``ctx.state``.
        See :meth:`WorkerService.on_startup`."""
        return self._hook("on_startup", fn, queue)

    def on_shutdown(self, fn: HookT | None = None, *, queue: str = DEFAULT_QUEUE) -> Any:
        """``@aq.on_shutdown``: run ``fn()`` after ``queue``'s workers stopped."""
        return self._hook("on_shutdown", fn, queue)

    def middleware(self, fn: Middleware | None = None, *, queue: str = DEFAULT_QUEUE) -> Any:
        """``@aq.middleware``: wrap every run of ``queue`` in ``fn(ctx, call_next)``."""
        return self._hook("middleware", fn, queue)

    def on_tag_bound(self, fn: HookT | None = None, *, queue: str = DEFAULT_QUEUE) -> Any:
        """``@aq.on_tag_bound``: run ``fn(event)`` when a worker of ``queue`` takes a tag."""
        return self._hook("on_tag_bound", fn, queue)

    def on_tag_released(self, fn: HookT | None = None, *, queue: str = DEFAULT_QUEUE) -> Any:
        """``@aq.on_tag_released``: run ``fn(event)`` when a worker gives a tag up."""
        return self._hook("on_tag_released", fn, queue)

    def _hook(self, kind: str, fn: Any, queue: str) -> Any:
        register = getattr(self.worker(queue), kind)
        return register(fn) if fn is not None else register

    def instrument(
        self,
        *,
        metrics: Callable[[str], MetricsRecorder] | None = None,
        tracing: Callable[[str], TraceRecorder] | None = None,
    ) -> None:
        """Install recorders on every queue (each factory gets the queue's name). Used by
        ``observability.metrics.metrics_app`` and ``observability.tracing.instrument``."""
        for name, q in self._queues.items():
            if metrics is not None:
                recorder = metrics(name)
                q.service.metrics = q.worker.metrics = q.scheduler.metrics = recorder
            if tracing is not None:
                q.service.tracer = q.worker.tracer = tracing(name)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state is _State.STARTED:
            raise LifecycleError("AffinityQueue.start(): already started; call aclose() first")
        if self._state is _State.CLOSED:
            for q in self._queues.values():
                q.reconnect()
            self._closing = None
        for q in self._queues.values():
            # Before anything runs: a refusal leaves nothing behind.
            await q.start_checks()
        working = [q for q in self._queues.values() if q.settings.app_role.works]
        try:
            for q in working:
                await q.worker.run_startup()
        except BaseException:
            for q in working:
                await q.worker.run_shutdown()
            raise
        self._state = _State.STARTED
        for name, q in self._queues.items():
            role = q.settings.app_role
            log.info(
                "queue %s: role %s, Redis %s, %d worker(s)",
                name,
                role.value,
                _redacted(q.settings.resolved_redis_url),
                q.settings.worker_count if role.works else 0,
                extra={"queue": name},
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
                await _step(name, "on_shutdown hooks", q.worker.run_shutdown)

            steps.append(("roles", stop_both))
        steps.append(("clients", q.clients.aclose))
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

    def dashboard(self, **options: Any) -> Any:
        """The dashboard of these queues, an ASGI app to ``mount`` (needs the ``dashboard``
        extra); see :func:`affinity_queue.dashboard.dashboard` for ``auth``, ``read_only``..."""
        from .dashboard import dashboard

        return dashboard(self, **options)

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
            "queue %s: stopping the %s failed; going on with the rest",
            queue,
            what,
            exc_info=e,
            extra={"queue": queue},
        )


def _redacted(url: str) -> str:
    """``url`` fit for a log: no user part (even one holding an unescaped ``@``), no password in
    the query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    base, q, query = rest.partition("?")
    if "@" in base:  # the user part ends at the last "@" before the query
        base = "***@" + base.rpartition("@")[2]
    if q:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(
            f"{k}={'***' if k.lower() == 'password' else v}" if eq else k for k, eq, v in pairs
        )
    return f"{scheme}://{base}{q}{query}"
