"""Commands are packed by hiredis, byte for byte as redis-py's own packer would, and whatever
hiredis refuses still gets redis-py's packing and errors."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import DataError

from affinity_queue.connections import HiredisPacking, packing, pool_factory

from .redis_server import RedisServer

ARGS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 3, "{q}:", "wq:{q}:", "ws:{q}:", 1.5, -3, 2**70, float("inf")),
    ("SET", "ключ", b"\xff\x00", "é" * 10_000),
    ("CONFIG GET", "maxclients"),
    (b"CLIENT SETNAME", "x"),
    ("SET", "k", bytearray(b"v")),
]


@pytest.mark.parametrize("args", ARGS)
def test_hiredis_packs_as_redis_py_does(args: tuple[Any, ...]) -> None:
    ours, theirs = packing(Connection)(), Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


@pytest.mark.parametrize("value", [None, True])
def test_what_hiredis_refuses_gets_redis_pys_error(value: Any) -> None:
    with pytest.raises(DataError):
        packing(Connection)().pack_command("SET", "k", value)


def test_every_connection_class_packs_with_hiredis() -> None:
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/x.sock"):
        _, options = pool_factory(url, {})
        assert issubclass(options["connection_class"], HiredisPacking), url
    _, options = pool_factory("rediss://127.0.0.1:1/0", {})
    assert issubclass(options["connection_class"], SSLConnection)
    _, options = pool_factory("redis+sentinel://127.0.0.1:1/master", {})
    assert issubclass(options["connection_class"], HiredisPacking)


async def test_commands_round_trip_through_a_packed_pool(redis_server: RedisServer) -> None:
    pool_class, options = pool_factory(redis_server.url, {})
    client = Redis.from_pool(pool_class(**options, decode_responses=True))
    try:
        key = "packing-test:ключ"
        await client.set(key, "é" * 10_000, px=5000)
        assert await client.get(key) == "é" * 10_000
        assert "maxclients" in await client.config_get("maxclients")
        async with client.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat(key + ":f", 1.5).incrbyfloat(key + ":f", 2.25).delete(key, key + ":f")
            assert (await pipe.execute())[:2] == [1.5, 3.75]
    finally:
        await client.aclose()
