"""ACL: the documented least-privilege rule runs a queue's whole lifecycle; a user without one of
its commands gets an error naming the command and the rule."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.routing import APIRoute

from affinity_queue import AclDeniedError, AffinityQueue, JobFailedError, QueueSettings, Retry
from affinity_queue.acl import ACL_COMMANDS, SCRIPT_COMMANDS, acl_rule
from affinity_queue.cli import main
from affinity_queue.lua import SCRIPT_NAMES, script_source

from ..redis_server import RedisServer
from ..support import wait_for

README = Path(__file__).parents[2] / "README.md"
PASSWORD = "acl-test-pw"


def test_the_rule_lists_every_command_the_scripts_call() -> None:
    called = {
        c.lower()
        for name in SCRIPT_NAMES
        for c in re.findall(r"rcall\('([A-Z]+)'", script_source(name))
    }
    assert called == set(SCRIPT_COMMANDS)
    assert not {"keys", "flushdb", "flushall", "config"} & set(ACL_COMMANDS)


def test_the_readme_gives_the_rule_of_the_default_queue() -> None:
    rule = acl_rule(QueueSettings(_env_file=None))
    assert rule in README.read_text().replace("\n", " ")


def user(server: RedisServer, name: str, rule: str) -> None:
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule.split())


def settings_for(server: RedisServer, name: str, **extra: Any) -> QueueSettings:
    return QueueSettings(
        _env_file=None,
        redis_url=server.url,
        redis_username=name,
        redis_password=PASSWORD,
        pending_queue_name="acl-q",
        worker_queue_prefix="acl-q-wq",
        worker_state_prefix="acl-q-ws",
        scheduler_interval_ms=200,
        heartbeat_interval_ms=300,
        heartbeat_timeout_ms=2000,
        election_lock_ttl_ms=2000,
        retry_backoff_ms=10,
        **extra,
    )


async def test_the_documented_rule_runs_the_whole_lifecycle(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(private_redis, "aq")
    user(private_redis, "aq", acl_rule(settings))
    aq = AffinityQueue(settings)
    tries: dict[str, int] = {}

    @aq.handler("ok")
    async def ok(payload: int) -> int:
        return payload * 2

    @aq.handler("flaky")
    async def flaky(payload: str) -> str:
        tries[payload] = tries.get(payload, 0) + 1
        if tries[payload] == 1:
            raise Retry(0.01)
        return "second time"

    @aq.handler("boom")
    async def boom(payload: Any) -> None:
        raise ValueError("always")

    async with aq:
        q = aq.queue()
        assert (
            await q.wait_for(
                (await q.add({"type": "ok", "identifyTag": "a", "payload": 2})).id, timeout_s=10
            )
            == 4
        )
        bulk = await q.add_bulk(
            [{"type": "ok", "identifyTag": f"b{i}", "payload": i} for i in range(5)]
        )
        flaky_job = await q.add(
            {"type": "flaky", "identifyTag": "a", "payload": "x"}, max_attempts=2
        )
        assert await q.wait_for(flaky_job.id, timeout_s=10) == "second time"
        dead = await q.add({"type": "boom", "identifyTag": "d"})
        with pytest.raises(JobFailedError):
            await q.wait_for(dead.id, timeout_s=10)
        assert [j.id for j in (await q.find_failed(type="boom")).jobs] == [dead.id]
        assert await q.requeue_failed(dead.id)
        await wait_for(q.list_failed, lambda f: len(f) == 1, what="dead again")
        assert await q.delete_failed(dead.id)
        again = await q.add({"type": "ok", "identifyTag": "k", "payload": 1}, dedupe_key="k")
        assert (
            await q.add({"type": "ok", "identifyTag": "k", "payload": 1}, dedupe_key="k")
        ).id == again.id
        later = await q.add({"type": "ok", "identifyTag": "z"}, delay_s=60)
        assert (await q.cancel(later.id)).value == "cancelled"
        await q.pause()
        await q.resume()
        await q.pause_tag("p")
        held = await q.add({"type": "ok", "identifyTag": "p", "payload": 0})
        assert await q.search_tags("p") == (["p"], True)
        await q.resume_tag("p")
        await q.wait_for(held.id, timeout_s=10)
        for job in bulk:
            await q.wait_for(job.id, timeout_s=10)
        stats = await q.get_queue_stats()
        assert stats.leader is not None and stats.workers  # elected, registered
        await q.get_config()
        await q.activity(minutes=2)
        await q.waiting_tags()
        await q.list_finished()
        await q.get_tags(["a", "p"])
        await q.list_delayed()
        await q.list_tag_jobs("a")
        assert await q.exists()
        app = aq.dashboard(allow_unauthenticated=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for route in app.routes:
                if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
                    path = route.path.format(
                        queue="default", tid="61", job_id=dead.id, name="style.css"
                    )
                    response = await c.get(path)
                    assert response.status_code < 500, (path, response.text)
        for var, value in {
            "REDIS_URL": private_redis.url,
            "REDIS_USERNAME": "aq",
            "REDIS_PASSWORD": PASSWORD,
            "PENDING_QUEUE_NAME": "acl-q",
            "WORKER_QUEUE_PREFIX": "acl-q-wq",
            "WORKER_STATE_PREFIX": "acl-q-ws",
        }.items():
            monkeypatch.setenv(var, value)
        for command in (["stats"], ["workers"], ["failed"]):
            assert await asyncio.to_thread(main, command) == 0, command


@pytest.mark.parametrize(
    ("missing", "call", "named"),
    [
        ("hset", "add", "the command HSET (add +hset) inside the add script"),
        ("hgetall", "get_job", "the command HGETALL (add +hgetall)"),
        ("hmget", "start", "the command HMGET (add +hmget)"),
    ],
)
async def test_a_missing_command_is_named_with_the_rule(
    private_redis: RedisServer, missing: str, call: str, named: str
) -> None:
    settings = settings_for(private_redis, f"no-{missing}", app_role="PRODUCER")
    rule = acl_rule(settings)
    user(private_redis, f"no-{missing}", rule.replace(f" +{missing} ", " "))
    aq = AffinityQueue(settings)
    try:
        with pytest.raises(AclDeniedError) as e:
            await aq.start()
            if call == "add":
                await aq.queue().add({"type": "t", "identifyTag": "a"})
            elif call == "get_job":
                await aq.queue().get_job("1-00")
    finally:
        await aq.aclose()
    assert named in str(e.value) and rule in str(e.value), str(e.value)


async def test_loops_log_a_refused_command_with_the_rule(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(private_redis, "no-blpop", app_role="WORKER")
    user(private_redis, "no-blpop", acl_rule(settings).replace(" +blpop ", " "))
    async with AffinityQueue(settings):
        await wait_for(
            lambda: asyncio.sleep(0.05),
            lambda _: any("BLPOP (add +blpop)" in r.getMessage() for r in caplog.records),
            what="the refusal logged",
        )
    [record] = [r for r in caplog.records if "BLPOP" in r.getMessage()]
    assert record.levelno == logging.ERROR and "ACL SETUSER <user> resetkeys" in record.message
