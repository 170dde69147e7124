"""Start checks: an evicting maxmemory-policy warns (or refuses), an old server warns, and a user
without INFO is not checked, quietly."""

from __future__ import annotations

import logging

import pytest
import redis

from affinity_queue import AffinityQueue, EvictionPolicyError
from affinity_queue.acl import acl_rule
from affinity_queue.server import too_old

from ..redis_server import RedisServer
from .test_acl import settings_for, user


def policy(server: RedisServer, value: str) -> None:
    with redis.Redis(port=server.port) as admin:
        admin.config_set("maxmemory-policy", value)


async def test_an_evicting_policy_warns(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    policy(private_redis, "volatile-lru")
    settings = settings_for(private_redis, "aq")
    user(private_redis, "aq", acl_rule(settings))
    async with AffinityQueue(settings):
        pass
    [warning] = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "'volatile-lru'" in warning.getMessage()


async def test_require_noeviction_refuses_to_start(private_redis: RedisServer) -> None:
    policy(private_redis, "allkeys-lru")
    settings = settings_for(private_redis, "aq", redis_require_noeviction=True)
    user(private_redis, "aq", acl_rule(settings))
    aq = AffinityQueue(settings)
    with pytest.raises(EvictionPolicyError, match=r"'allkeys-lru'.*noeviction"):
        await aq.start()
    await aq.aclose()


async def test_without_info_rights_the_checks_are_skipped_quietly(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    policy(private_redis, "allkeys-lru")
    settings = settings_for(private_redis, "no-info", redis_require_noeviction=True)
    user(private_redis, "no-info", acl_rule(settings).replace(" +info ", " "))
    async with AffinityQueue(settings):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_versions_older_than_6_2_are_too_old() -> None:
    assert too_old("6.0.16") and too_old("5.0.7")
    assert not too_old("6.2.0") and not too_old("7.0.15") and not too_old("")
