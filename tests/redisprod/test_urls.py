"""Sentinel URLs: what they carry, and errors that say what is wrong without echoing them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from affinity_queue import QueueSettings
from affinity_queue.connections import parse_sentinel_url, tls_options


def test_a_sentinel_url_names_hosts_master_db_and_passwords() -> None:
    t = parse_sentinel_url(
        "rediss+sentinel://u:pw@10.0.0.1:26380,[::1]:5,s3/mymaster/2?sentinel_password=sp"
    )
    assert t.sentinels == [("10.0.0.1", 26380), ("::1", 5), ("s3", 26379)]
    assert (t.service_name, t.tls) == ("mymaster", True)
    assert {k: t.options[k] for k in ("username", "password", "db")} == {
        "username": "u",
        "password": "pw",
        "db": 2,
    }
    assert t.sentinel_options == {"password": "sp"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "names the master after the hosts"),
        ("redis+sentinel://h:26379/m/x", "names the master after the hosts"),
        ("redis+sentinel://h:port/m", "host:port pairs"),
        ("redis+sentinel://:secret@,h/m", "host:port pairs"),
    ],
)
def test_a_bad_sentinel_url_is_refused_without_repeating_it(url: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as e:
        QueueSettings(_env_file=None, redis_url=url)
    assert "secret" not in str(e.value)


def test_redis_password_and_username_reach_the_master() -> None:
    s = QueueSettings(
        _env_file=None,
        redis_url="redis+sentinel://s1,s2/m",
        redis_password="p w",
        redis_username="aq",
    )
    assert s.resolved_redis_url == "redis+sentinel://:p%20w@s1,s2/m"
    assert tls_options(s) == {"username": "aq"}
    with pytest.raises(ValidationError, match="REDIS_USERNAME is set too"):
        QueueSettings(_env_file=None, redis_url="redis://u@h", redis_username="aq")
