"""Credentials and internal addresses stay out of logs, command output and public error bodies;
a wrong password is reported as what it is, not as an outage."""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from affinity_queue import AffinityQueue, QueueSettings, QueueUnavailableError
from affinity_queue.core import _redacted

from .app_support import CONSOLE_SCRIPT, REPO, load_example, serve, subprocess_env
from .redis_server import free_port
from .support import wait_for

PASSWORD = "s3cr@t/pw?x"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss@db:6379/0", "redis://***@db:6379/0"),
        ("redis://user:p@ss@db:6379/0", "redis://***@db:6379/0"),
        ("redis://db:6379/0?password=p@ss&db=1", "redis://db:6379/0?password=***&db=1"),
        ("rediss://:a@b@db?PASSWORD=c", "rediss://***@db?PASSWORD=***"),
        ("unix://:p@ss@/run/redis.sock?db=1", "unix://***@/run/redis.sock?db=1"),
        ("redis://db:6379/0", "redis://db:6379/0"),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str) -> None:
    assert _redacted(url) == shown
    assert "p@ss" not in _redacted(url) and "pss" not in _redacted(url)


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[int]:
    """A private redis-server that requires ``PASSWORD``."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=0.2)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "no redis-server"
                time.sleep(0.02)
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _settings(port: int, password: str | None, **extra: object) -> QueueSettings:
    name = f"auth-{secrets.token_hex(4)}"
    return QueueSettings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_password=password,
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
        heartbeat_interval_ms=300,
        heartbeat_timeout_ms=2000,
        election_lock_ttl_ms=2000,
        shutdown_grace_period_ms=200,
        **extra,
    )


async def test_redis_password_reaches_redis(auth_redis: int) -> None:
    async with AffinityQueue(_settings(auth_redis, PASSWORD)) as aq:
        job = await aq.queue().add({"type": "t", "identifyTag": "a"})
        assert (await aq.queue().get_job(job.id)) is not None


@pytest.mark.parametrize("password", ["wrong-password", None])
async def test_a_wrong_password_is_an_authentication_failure(
    auth_redis: int, password: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="affinity_queue")
    aq = AffinityQueue(_settings(auth_redis, password))
    async with aq:
        with pytest.raises(QueueUnavailableError) as caught:
            await aq.queue().add({"type": "t", "identifyTag": "a"})
        assert caught.value.authentication_failed and not caught.value.maybe_written
        assert "authentication failed" in str(caught.value)
        assert "REDIS_PASSWORD" in str(caught.value)

        def failures() -> list[str]:
            return [
                r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()
            ]

        async def seen() -> list[str]:
            return failures()

        await wait_for(seen, bool, what="the loops log an authentication failure")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "unavailable" in m], messages
    assert not [m for m in messages if (password and password in m) or PASSWORD in m], messages


def test_the_cli_shows_no_password(auth_redis: int) -> None:
    settings = _settings(auth_redis, None, app_role="SCHEDULER")
    url = f"redis://:{PASSWORD.replace('/', '%2F').replace('?', '%3F')}@127.0.0.1:{auth_redis}/0"
    env = subprocess_env(settings, REDIS_URL=url)
    result = subprocess.run(
        [CONSOLE_SCRIPT, "stats", "example_app.main:aq"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    wrong = {**env, "REDIS_URL": url.replace("s3cr", "nope")}
    failed = subprocess.run(
        [CONSOLE_SCRIPT, "stats", "example_app.main:aq"],
        cwd=REPO,
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "authentication failed" in failed.stderr
    for out in (result.stdout, result.stderr, failed.stdout, failed.stderr):
        assert "s3cr" not in out and "nope" not in out


async def test_the_503_body_names_no_address(monkeypatch, make_settings) -> None:
    from .app_support import env_for

    port = free_port()
    closed = f"redis://:{secrets.token_hex(4)}@127.0.0.1:{port}/0"
    example = load_example(monkeypatch, env_for(make_settings(redis_url=closed)))
    async with serve(example.app) as http:
        response = await http.post("/tasks", json={"type": "send-email", "identifyTag": "t"})
    assert response.status_code == 503
    body = response.json()
    assert body == {
        "error": "queue_unavailable",
        "message": "the queue is unavailable; nothing was written",
        "maybeWritten": False,
    }
