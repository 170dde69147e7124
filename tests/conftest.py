from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from affinity_queue import QueueSettings

from .engine import Engine
from .redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole run; tests isolate by queue name."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def queue_name() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def make_settings(redis_server: RedisServer, queue_name: str) -> Callable[..., QueueSettings]:
    """Settings for a queue whose keys no other test shares, with short timings."""

    def make(**overrides: Any) -> QueueSettings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "pending_queue_name": queue_name,
            "worker_queue_prefix": f"{queue_name}-wq",
            "worker_state_prefix": f"{queue_name}-ws",
            "scheduler_interval_ms": 200,
            "heartbeat_interval_ms": 300,
            "heartbeat_timeout_ms": 2000,
            "election_lock_ttl_ms": 2000,
            "shutdown_grace_period_ms": 2000,
        }
        values.update(overrides)
        return QueueSettings(_env_file=None, **values)

    return make


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def engine(
    redis_client: aioredis.Redis, make_settings: Callable[..., QueueSettings]
) -> Engine:
    """The scripts of a queue of this test alone, driven by hand (tests/engine.py)."""
    return Engine(redis_client, make_settings())


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, for breaking it (maxmemory, REPLICAOF)."""
    server = RedisServer().start()
    yield server
    server.cleanup()
