"""Redis Cluster: the clients behind ``REDIS_URL=redis+cluster://host:port[,host:port...]``.

Every key of a queue lives in one slot (the hash tag ``{PENDING_QUEUE_NAME}``, see keys.py), so a
queue talks to one master at a time: the one serving that slot. redis-py's asyncio
``RedisCluster`` finds it, follows MOVED and ASK, and re-reads the topology after a failover;
:class:`QueueCluster` adds what the single-server clients of core.py promise:

- a full pool makes a command wait up to REDIS_POOL_TIMEOUT for a free connection (redis-py's
  cluster pool raises at once), so a burst of producers queues instead of failing;
- keyless commands (``TIME``, ``PING``, ``INFO``) go to the queue's master, whose clock the
  scripts read, not to an arbitrary node;
- the client never re-sends a command by itself: a command that timed out may have run, and
  redirections (MOVED, ASK, TRYAGAIN) are followed by redis-py without re-running anything. The
  loops and producers retry where that is safe, as on one server.

Pub/Sub (``wait_for``) subscribes on the queue's master with the classic ``SUBSCRIBE``: a
``PUBLISH`` reaches every node of a cluster, so a subscription survives a reshard of the slot,
and a failover breaks it like a restart does (the waiters get an error and resubscribe).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any, cast
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL schemes and the single-server scheme whose options (TLS, user, password) they
take: ``rediss+cluster://`` is TLS to every node."""

CLUSTER_REFUSED: tuple[type[BaseException], ...] = (
    TryAgainError,
    ClusterError,
    SlotNotCoveredError,
)
"""Cluster errors that mean the command did not run and a later attempt may: the slot is being
migrated (``TRYAGAIN``, or redirections past redis-py's limit, "TTL exhausted"), the cluster is
down until a replica takes over (``CLUSTERDOWN``), or no node is known to serve the slot. Other
``RedisClusterException`` are bugs (keys of two slots), except those of reading the slot map,
which :class:`QueueCluster` turns into connection errors."""

_holding: ContextVar[object] = ContextVar("affinity_queue_cluster_permit", default=None)
"""The client whose permit this task holds: a pipeline re-sends redirected commands through the
client, and that must not wait for a second permit (a full pool would deadlock)."""


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """The seed nodes of a cluster URL, and the same URL for the first seed alone (it carries
    the options every node gets). Raises ValueError naming what is wrong, never the URL."""
    scheme, _, rest = url.partition("://")
    single = CLUSTER_SCHEMES[scheme.lower()]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    user, at, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        host, colon, port = seed.strip().rpartition(":")
        if not colon:
            host, port = seed.strip(), "6379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{scheme}:// needs host:port seeds separated by commas "
                "(for example redis+cluster://10.0.0.1:7000,10.0.0.2:7000)"
            )
        seeds.append((unquote(host), int(port)))
    path = tail.partition("?")[0].strip("/")
    if path not in ("", "0"):
        raise ValueError(f"{scheme}:// has database {path!r}: Redis Cluster has database 0 only")
    return seeds, f"{single}://{user}{at}{seeds[0][0]}:{seeds[0][1]}{tail}"


class _ClusterPipeline(ClusterPipeline):
    """redis-py refuses EVALSHA and TIME in cluster pipelines, for scripts that may name keys of
    several slots and for keyless commands: ours name keys of the queue's slot only, and TIME
    goes to the queue's master (``get_default_node``), so both are safe to send here."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def time(self, **kwargs: Any) -> Any:
        return self.execute_command("TIME", **kwargs)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = cast(QueueCluster, self.cluster_client)
        async with client.permit():
            return await super().execute(raise_on_error, allow_redirections)


class _ClusterPubSub(ClusterPubSub):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # The subscription picks its node from the slot table: read it first if a failover
        # emptied it, rather than fail on a stale or missing node.
        await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


class QueueCluster(RedisCluster):
    """A cluster client for one queue: ``home_key`` is any key of the queue's slot."""

    def __init__(
        self, *, home_key: str, max_connections: int, pool_timeout_s: float, **options: Any
    ) -> None:
        # One connection more per node than permits: the wait_for subscription holds one.
        super().__init__(max_connections=max_connections + 1, **options)
        self.home_slot = key_slot(home_key.encode())
        self._permits = asyncio.Semaphore(max_connections)
        self._pool_timeout_s = pool_timeout_s

    async def initialize(self, *args: Any, **kwargs: Any) -> QueueCluster:
        """Reads the slot map; no seed reachable, or no full map yet, is an outage like any
        other (redis-py raises ``RedisClusterException``, which is no ``ConnectionError``)."""
        try:
            await super().initialize(*args, **kwargs)
        except SlotNotCoveredError:
            raise
        except RedisClusterException as e:
            raise RedisConnectionError(f"Redis Cluster: {e}") from e
        return self

    def permit(self) -> _Permit:
        return _Permit(self, self._permits, self._pool_timeout_s)

    def get_default_node(self) -> ClusterNode:
        nodes = self.nodes_manager.slots_cache.get(self.home_slot)
        return nodes[0] if nodes else super().get_default_node()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if transaction or shard_hint:  # no caller of ours asks for either
            raise ValueError("cluster pipelines here are never transactions")
        return _ClusterPipeline(self)  # type: ignore[abstract]  # as redis-py builds it

    async def aclose(self) -> None:
        await super().aclose()
        # redis-py closes nothing while a topology re-read is pending (after a connection
        # error, until the next command): close every node's connections all the same.
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


class _Permit:
    """One of a client's permits for the task that holds none yet, waited for up to the pool
    timeout; then the error a full single-server pool raises ("No connection available")."""

    def __init__(self, client: QueueCluster, permits: asyncio.Semaphore, timeout_s: float) -> None:
        self._client = client
        self._permits = permits
        self._timeout_s = timeout_s
        self._token: Any = None

    async def __aenter__(self) -> None:
        if _holding.get() is self._client:
            return
        try:
            await asyncio.wait_for(self._permits.acquire(), self._timeout_s)
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        self._token = _holding.set(self._client)

    async def __aexit__(self, *exc: object) -> None:
        if self._token is not None:
            _holding.reset(self._token)
            self._token = None
            self._permits.release()


def connect_cluster(
    seeds: list[tuple[str, int]],
    options: dict[str, Any],
    *,
    home_key: str,
    socket_timeout_s: float,
    max_connections: int,
    pool_timeout_s: float,
) -> Redis:
    """A :class:`QueueCluster` of ``seeds`` with core.connect's connection ``options`` (those
    of the URL's first seed).

    Typed as ``Redis``: it offers every command the package sends (scripts, pipelines, blocking
    pops, Pub/Sub) under the same names, so the rest of the package needs no second type."""
    dropped = ("host", "port", "db", "retry", "timeout", "connection_class")
    own = {k: v for k, v in options.items() if k not in dropped}
    client = QueueCluster(
        home_key=home_key,
        max_connections=max_connections,
        pool_timeout_s=pool_timeout_s,
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        retry=Retry(NoBackoff(), 0),
        reinitialize_steps=0,  # MOVED moves one slot: patch it, never drop every connection
        socket_timeout=socket_timeout_s,
        ssl=issubclass(options.get("connection_class", object), SSLConnection),
        **own,
    )
    return cast(Redis, client)
