"""Where a queue's connections go: one server (``redis://``, ``rediss://``, ``unix://``) or the
master a set of Sentinels names (``redis+sentinel://``), with TLS and ACL user options.

A Sentinel pool asks the Sentinels for the master's address whenever it opens a connection, and
drops a connection that finds its server demoted (``READONLY``), so every client (commands,
blocking waits, the ``wait_for`` subscription) follows a failover on its next connection. Our
loops and producers already retry through the outage that a failover is.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import hiredis  # a dependency, through redis[hiredis]
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

if TYPE_CHECKING:
    from .settings import QueueSettings

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SENTINEL_EXAMPLE = "redis+sentinel://host1:26379,host2:26379/mymaster"


class HiredisPacking:
    """Packs commands with hiredis's C packer, as redis-py's sync client does; its asyncio
    client packs in Python, about ten times slower (40 against 4 µs for a 22-argument script call
    here), which was an eighth of a producer's CPU per ``add``. Anything hiredis refuses
    (``None``, ``bool``, ``bytearray``) goes to redis-py's packer, with its errors."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        head = args[0]
        # As redis-py does: "CONFIG GET" names a command of two words.
        if isinstance(head, str) and " " in head:
            args = (*head.encode().split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


class TaskFreeWrites(AbstractConnection):
    """Python 3.11's ``asyncio.wait_for`` runs what it waits for in a Task of its own, and
    redis-py bounds each command's write by its socket timeout that way: a task and two more
    event-loop turns per command (without them, 1.13 times the awaited ``add`` calls per second
    here). The write runs under ``asyncio.timeout`` instead (what 3.12's ``wait_for`` does); a
    timeout still drops the connection and raises redis-py's ``TimeoutError``. Connecting keeps
    redis-py's own path."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        if not timeout or not self.is_connected:
            return await super().send_packed_command(command, check_health)
        self.socket_timeout = None  # redis-py writes without a wait_for of its own
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:  # ours; redis-py turns a socket's own error into its errors
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


_TUNINGS: tuple[type, ...] = (HiredisPacking,)
if sys.version_info < (3, 12):
    _TUNINGS += (TaskFreeWrites,)


@cache
def packing(connection_class: type[Connection]) -> type[Connection]:
    """``connection_class`` with :class:`HiredisPacking` (and :class:`TaskFreeWrites` before
    Python 3.12)."""
    return type(connection_class.__name__, (*_TUNINGS, connection_class), {})


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that, like ``BlockingConnectionPool``, makes a caller wait (up to its
    ``timeout``) for a free connection instead of failing past ``max_connections``."""

    async def aclose_sentinels(self) -> None:
        """Close the connections to the Sentinels (the pool's own are closed by its client)."""
        await self.sentinel_manager.aclose()


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]?...``."""

    sentinels: list[tuple[str, int]]
    service_name: str
    tls: bool
    options: dict[str, Any]  # for the master's connections: db, user, password, query options
    sentinel_options: dict[str, Any]  # for the Sentinels': sentinel_username, sentinel_password


def is_sentinel(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Raises ``ValueError`` naming what is wrong (never repeating the URL: it may hold a
    password)."""
    scheme, _, rest = url.partition("://")
    base, q, query = rest.partition("?")
    userinfo, at, hosts_path = base.rpartition("@")
    netloc, _, path = hosts_path.partition("/")
    segments = [unquote(p) for p in path.split("/") if p]
    if not segments or len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError(
            f"a Sentinel URL names the master after the hosts, then optionally a db number: "
            f"{SENTINEL_EXAMPLE}[/0]"
        )
    sentinels = []
    for entry in netloc.split(","):
        if entry.startswith("["):  # [IPv6]:port
            host, _, port = entry[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = entry.partition(":")
        port = port or str(SENTINEL_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"a Sentinel URL lists host:port pairs, comma-separated: {SENTINEL_EXAMPLE}"
            )
        sentinels.append((host, int(port)))
    db = segments[1] if len(segments) == 2 else "0"
    # The master's options are a plain URL's: reuse redis-py's parsing of them.
    options = dict(parse_url(f"redis://{userinfo}{at}sentinel-master/{db}{q}{query}"))
    for name in ("host", "port"):
        options.pop(name, None)
    sentinel_options = {
        name.removeprefix("sentinel_"): options.pop(name)
        for name in ("sentinel_username", "sentinel_password")
        if name in options
    }
    return SentinelTarget(
        sentinels, segments[0], scheme.lower().startswith("rediss"), options, sentinel_options
    )


def tls_options(s: QueueSettings) -> dict[str, Any]:
    """Connection options from the TLS and ACL user settings (they win over the URL's)."""
    options: dict[str, Any] = {}
    if s.redis_username:
        options["username"] = s.redis_username
    url = (s.redis_url or "").lower()
    if url.startswith("rediss"):
        options["ssl_check_hostname"] = s.redis_ssl_check_hostname
        for option, path in (
            ("ssl_ca_certs", s.redis_ssl_ca_certs),
            ("ssl_certfile", s.redis_ssl_certfile),
            ("ssl_keyfile", s.redis_ssl_keyfile),
        ):
            if path:
                options[option] = path
    return options


def pool_factory(
    url: str, own: dict[str, Any]
) -> tuple[Callable[..., ConnectionPool], dict[str, Any]]:
    """The pool class to build for ``url`` and the URL's connection options (``own`` ones
    win): a ``BlockingConnectionPool`` for one server, a :class:`BlockingSentinelPool` for a
    Sentinel URL."""
    if not is_sentinel(url):
        options = {**parse_url(url), **own}
        options["connection_class"] = packing(options.get("connection_class", Connection))
        return BlockingConnectionPool, options
    target = parse_sentinel_url(url)
    sentinel_class = SentinelManagedSSLConnection if target.tls else SentinelManagedConnection

    def sentinel_pool(**options: Any) -> ConnectionPool:
        # Each pool owns its Sentinel clients, with the same short timeouts as its connections.
        sentinel_kwargs = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "decode_responses": True,
            **target.sentinel_options,
        }
        manager = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            target.sentinels, sentinel_kwargs=sentinel_kwargs
        )
        return BlockingSentinelPool(  # type: ignore[no-untyped-call]
            target.service_name, manager, is_master=True, **options
        )

    return sentinel_pool, {
        **target.options,
        **own,
        "connection_class": packing(sentinel_class),
    }


async def aclose_client(client: Redis) -> None:
    """Close ``client``, its pool, and the pool's Sentinel clients if it has any."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)  # a cluster client has one per node
    if isinstance(pool, BlockingSentinelPool):
        await pool.aclose_sentinels()
