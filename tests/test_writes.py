"""A command's write is bounded by the socket timeout without a Task of its own per command
(``TaskFreeWrites`` on Python 3.11; 3.12's ``wait_for`` makes none), and a write that cannot
finish still times out, drops its connection and raises redis-py's ``TimeoutError``."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from affinity_queue.connections import pool_factory

from .redis_server import RedisServer


def client_of(server: RedisServer, socket_timeout: float) -> Redis:
    pool_class, options = pool_factory(server.url, {})
    return Redis.from_pool(pool_class(**options, socket_timeout=socket_timeout))


async def test_a_command_makes_no_task_of_its_own(redis_server: RedisServer) -> None:
    client = client_of(redis_server, 5.0)
    loop = asyncio.get_running_loop()
    made = 0

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.ping()  # connected: the first command connects on redis-py's own path
        loop.set_task_factory(factory)
        for i in range(100):
            await client.set("writes-test:k", i, px=5000)
        assert made == 0
    finally:
        loop.set_task_factory(None)
        await client.aclose()


async def test_a_write_that_cannot_finish_times_out_and_drops_the_connection(
    private_redis: RedisServer,
) -> None:
    """Redis stopped (SIGSTOP) reads nothing: a 64 MB write fills the socket buffers and waits.
    It ends at the socket timeout with redis-py's error, and the next command, once Redis runs
    again, gets a new connection. (redis-py closes the dropped connection without waiting for
    its 64 MB to flush: pytest may report its transport as collected unclosed.)"""
    client = client_of(private_redis, 0.3)
    assert private_redis.proc is not None
    try:
        await client.ping()
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError, match="writing"):
                await asyncio.wait_for(client.set("big", "x" * 64_000_000), 10)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        assert await client.ping()
        assert await client.get("big") is None  # the cut-off write never became a command
    finally:
        await client.aclose()
