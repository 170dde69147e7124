"""The operator commands against a real Redis with real work: tables, ``--json`` parsed, usage
errors that exit 2 and change nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from affinity_queue import AffinityQueue, JobFailedError, QueueSettings
from affinity_queue.cli import main

from .support import wait_for


@pytest.fixture
def work(make_settings, monkeypatch) -> dict[str, Any]:
    """A queue that ran: one dead letter (ValueError), a paused tag with two pending jobs."""
    settings: QueueSettings = make_settings()
    for var, value in {
        "REDIS_URL": settings.resolved_redis_url,
        "PENDING_QUEUE_NAME": settings.pending_queue_name,
        "WORKER_QUEUE_PREFIX": settings.worker_queue_prefix,
        "WORKER_STATE_PREFIX": settings.worker_state_prefix,
    }.items():
        monkeypatch.setenv(var, value)

    async def run() -> dict[str, Any]:
        aq = AffinityQueue(settings)

        @aq.handler("boom")
        async def boom(payload: Any) -> None:
            raise ValueError("no customer")

        async with aq:
            q = aq.queue()
            await q.pause_tag("held")
            pending = [await q.add({"type": "boom", "identifyTag": "held"}) for _ in range(2)]
            dead = await q.add({"type": "boom", "identifyTag": "t-dead"})
            with pytest.raises(JobFailedError):
                await q.wait_for(dead.id, timeout_s=10)
            await wait_for(q.get_queue_stats, lambda s: s.pending == 2, what="two pending")
        return {"dead": dead.id, "pending": [j.id for j in pending], "settings": settings}

    return asyncio.run(run())


def cli_json(capsys, *args: str) -> Any:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def state(settings: QueueSettings) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        aq = AffinityQueue(settings)
        q = aq.queue()
        try:
            return {
                "failed": [j.id for j in await q.list_failed()],
                "config": await q.get_config(),
                "tags": await q.get_tags(["held"]),
                "jobs": {j.id: j.status for j in await q.list_tag_jobs("held")},
            }
        finally:
            await aq.aclose()

    return asyncio.run(read())


def test_read_commands(work, capsys) -> None:
    (tag,) = cli_json(capsys, "tags", "--tag", "held")
    assert tag["identify_tag"] == "held" and tag["pending"] == 2 and tag["paused"] is True
    busiest = cli_json(capsys, "tags", "--by", "backlog")  # paused: waiting, still listed
    assert [(t["identify_tag"], t["backlog"]) for t in busiest] == [("held", 2)]
    jobs = cli_json(capsys, "jobs", "--tag", "held", "--status", "pending")
    assert [j["id"] for j in jobs] == work["pending"]
    job = cli_json(capsys, "job", work["dead"])
    assert job["status"] == "failed" and "Traceback" in job["history"][0]["traceback"]
    (letter,) = cli_json(capsys, "failed", "--error", "ValueError")
    assert letter["id"] == work["dead"] and letter["error"] == "ValueError: no customer"
    assert cli_json(capsys, "failed", "--error", "KeyError") == []
    assert cli_json(capsys, "workers") == []  # the queue was closed: its workers deregistered
    assert cli_json(capsys, "leader") == [{"queue": "default"}]
    assert main(["stats"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["QUEUE", "PENDING", "DELAYED"]
    assert table[1].split()[1] == "2"


def test_actions_change_what_they_say(work, capsys) -> None:
    assert cli_json(capsys, "requeue", work["dead"], "--yes") == {"requeued": 1}
    assert state(work["settings"])["failed"] == []
    assert cli_json(capsys, "resume", "--tag", "held") == {"paused": False}
    assert not state(work["settings"])["tags"][0].paused
    assert cli_json(capsys, "pause") == {"paused": True}
    assert state(work["settings"])["config"]["paused"]
    assert cli_json(capsys, "cancel", work["pending"][0], "--yes") == {"outcome": "cancelled"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["requeue", "--all"], "without confirmation: pass --yes"),
        (["delete-failed", "DEAD"], "without confirmation: pass --yes"),
        (["cancel", "PENDING"], "without confirmation: pass --yes"),
        (["job", "not-an-id"], "is not a job id"),
        (["requeue", "--yes"], "give the ids"),
        (["stats", "--queue", "no-such-queue"], "no queue 'no-such-queue'"),
        (["jobs", "--status", "pending"], "pass --tag"),
    ],
)
def test_refused_commands_exit_2_and_change_nothing(work, capsys, monkeypatch, args, says) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    before = state(work["settings"])
    args = [{"DEAD": work["dead"], "PENDING": work["pending"][0]}.get(a, a) for a in args]
    assert main(args) == 2
    assert says in capsys.readouterr().err
    assert state(work["settings"]) == before


def test_missing_redis_url_is_a_usage_error(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["workers"]) == 2
    assert "set REDIS_URL" in capsys.readouterr().err


def test_every_command_has_help_with_an_example(capsys) -> None:
    for command in ["stats", "workers", "tags", "jobs", "job", "failed", "requeue",
                    "delete-failed", "cancel", "pause", "resume", "leader"]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert f"affinity-queue {command}" in out and "Exit codes" in out
