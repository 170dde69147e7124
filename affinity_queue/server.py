"""What a queue needs of its Redis server: a version and an eviction policy (the ACL rule is
in acl.py).

``check_server`` runs at start, through ``INFO`` only (never ``CONFIG``): a server that denies
``INFO`` is not checked, quietly.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from .errors import EvictionPolicyError, QueueUnavailableError, tls_failure
from .retry import RedisTrouble

if TYPE_CHECKING:
    from .settings import QueueSettings

log = logging.getLogger("affinity_queue")

MIN_REDIS_VERSION = (6, 2, 0)
"""The oldest Redis the scripts run on: ``ZADD ... GT`` (advance.lua) came in 6.2.0; the rest
(``ZPOPMIN`` 5.0, script effects replication 5.0, ``BLPOP`` with a fractional timeout 6.0,
ACL users 6.0) is older."""


def too_old(version: str) -> bool:
    """Whether ``INFO``'s ``redis_version`` is older than ``MIN_REDIS_VERSION`` (an unreadable
    one is not: compatible servers spell theirs in their own ways)."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    return bool(numbers) and numbers < MIN_REDIS_VERSION


async def check_server(queue: str, redis: Redis, settings: QueueSettings) -> None:
    """Warn when the server is older than ``MIN_REDIS_VERSION`` or may evict keys (refuse the
    latter with REDIS_REQUIRE_NOEVICTION). Needs ``INFO``; without it, or without Redis, the
    check is skipped (the loops report an outage). A TLS failure raises: it will not pass."""
    try:
        # One section per INFO in 6.2; two calls, not a pipeline, which a cluster client
        # refuses for INFO (it sends INFO to the queue's master).
        server = await redis.info("server")
        memory = await redis.info("memory")
    except NoPermissionError:
        log.debug("queue %s: INFO denied by the ACL: server checks skipped", queue)
        return
    except RedisTrouble as e:
        if tls_failure(e):
            raise QueueUnavailableError(queue, e) from e
        return
    version = str(server.get("redis_version", ""))
    if too_old(version):
        log.warning(
            "queue %s: Redis %s is older than %s, the oldest the scripts run on; "
            "expect script errors (ZADD GT)",
            queue,
            version,
            ".".join(map(str, MIN_REDIS_VERSION)),
        )
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        if settings.redis_require_noeviction:
            raise EvictionPolicyError(queue, policy)
        log.warning(
            "queue %s: Redis's maxmemory-policy is %r, which may delete queue keys (jobs, "
            "leases, request tokens) under memory pressure; set it to noeviction "
            "(REDIS_REQUIRE_NOEVICTION=true refuses to start instead of this warning)",
            queue,
            policy,
        )
