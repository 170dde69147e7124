"""``redis+cluster://`` URLs: read when the settings are, refused with a message that names what
is wrong (never the URL: it may hold a password)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from affinity_queue import AffinityQueue, QueueSettings, QueueUnavailableError
from affinity_queue.cluster import parse_cluster_url
from affinity_queue.core import _redacted

from ..redis_server import free_port
from .load import settings


def test_seeds_and_the_options_every_node_gets() -> None:
    seeds, single = parse_cluster_url(
        "rediss+cluster://app:pw@a.internal:7000,b.internal?ssl_cert_reqs=none"
    )
    assert seeds == [("a.internal", 7000), ("b.internal", 6379)]
    assert single == "rediss://app:pw@a.internal:7000?ssl_cert_reqs=none"
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000/0")[0] == [("10.0.0.1", 7000)]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://:hunter2@h:7000/1", "database 0 only"),
        ("redis+cluster://:hunter2@h:port", "host:port seeds"),
        ("redis+cluster://:hunter2@h:7000,,h2:7000", "host:port seeds"),
        ("redis+cluster://:hunter2@", "host:port seeds"),
    ],
)
def test_a_bad_cluster_url_is_refused(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        QueueSettings(_env_file=None, redis_url=url)
    assert "REDIS_URL" in str(caught.value) and says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_redis_password_fills_in_every_node_and_logs_hide_it(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss")
    monkeypatch.setenv("REDIS_URL", "redis+cluster://app@a:7000,b:7000")
    url = QueueSettings(_env_file=None).resolved_redis_url
    assert url == "redis+cluster://app:p%40ss@a:7000,b:7000"
    assert _redacted(url) == "redis+cluster://***@a:7000,b:7000"


async def test_no_reachable_seed_is_an_outage_not_a_crash() -> None:
    """redis-py reports unreachable seeds as ``RedisClusterException`` (no ``ConnectionError``):
    producers must get ``QueueUnavailableError``, as for a single server that is down."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    aq = AffinityQueue(settings(url, "down", app_role="PRODUCER", redis_timeout_ms=300))
    async with aq:
        with pytest.raises(QueueUnavailableError) as caught:
            await aq.queue().add({"type": "t", "identifyTag": "a", "payload": 1})
    assert caught.value.maybe_written is False
    assert "Redis Cluster cannot be connected" in str(caught.value)
