"""Structured logs: job lines carry the job's fields; JSON output; the worker command's options."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from affinity_queue import AffinityQueue, QueueSettings, Task
from affinity_queue.cli import build_parser
from affinity_queue.observability.logs import JsonFormatter
from affinity_queue.observability.metrics import metrics_app, serve

from ..support import drained, wait_for


async def test_failure_lines_carry_the_job_fields_and_format_as_json(
    make_settings: Callable[..., QueueSettings], caplog: pytest.LogCaptureFixture
) -> None:
    aq = AffinityQueue(make_settings(max_attempts=2, retry_backoff_ms=1))

    @aq.handler("fail")
    async def fail(payload: None) -> None:
        raise KeyError("missing")

    with caplog.at_level(logging.WARNING, logger="affinity_queue.worker"):
        async with aq:
            job = await aq.queue().add(Task(type="fail", identify_tag="acme"))
            await drained(aq.queue(), 1)
    lines = [r for r in caplog.records if getattr(r, "job_id", None) == job.id]
    assert [r.levelname for r in lines] == ["WARNING", "ERROR"]
    assert [r.attempt for r in lines] == [1, 2]  # type: ignore[attr-defined]
    out = json.loads(JsonFormatter().format(lines[1]))
    assert {k: out[k] for k in ("queue", "job_id", "job_type", "tag", "level")} == {
        "queue": "default",
        "job_id": job.id,
        "job_type": "fail",
        "tag": "acme",
        "level": "ERROR",
    }
    assert out["worker_id"] and out["ts"].endswith("+00:00")
    assert out["exc_info"].count("Traceback") == 1  # once, on the final failure only
    assert lines[0].exc_info is None


def test_the_worker_command_takes_log_and_metrics_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser().parse_args(
        ["worker", "--log-format", "json", "--log-level", "debug", "--metrics-port", "9100", "m:a"]
    )
    assert (args.log_format, args.log_level, args.metrics_port) == ("json", "debug", 9100)
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert build_parser().parse_args(["worker", "m:a"]).log_format == "json"


async def test_the_metrics_port_serves_the_exposition(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings())
    server = await serve(metrics_app(aq), 0, "127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        async with aq:
            await aq.queue().add(Task(type="x", identify_tag="a"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            response = (await asyncio.wait_for(reader.read(), 10)).decode()
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert response.startswith("HTTP/1.0 200 OK")
    assert 'affinity_queue_tasks_enqueued_total{queue="default",type="x"} 1.0' in response


def _library(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("affinity_queue")]


async def test_a_recovery_names_the_jobs_it_handed_back(
    make_settings: Callable[..., QueueSettings], caplog: pytest.LogCaptureFixture
) -> None:
    # Only the scheduler runs here: the one worker is a fake whose lease is then moved past.
    aq = AffinityQueue(make_settings(app_role="SCHEDULER", heartbeat_interval_ms=100))
    with caplog.at_level(logging.DEBUG, logger="affinity_queue"):
        async with aq:
            q = aq.queue()
            await q._scripts.register("dead-1", 60_000, "h", 1, "e")
            jobs = await q.add_bulk([Task(type="t", identify_tag="x")] * 3)
            await wait_for(
                q.get_queue_stats,
                lambda s: any(w.queue_length == 3 for w in s.workers),
                what="the fake worker to be given the 3 jobs",
            )
            await q._redis.zadd(q.settings.keys.workers, {"dead-1": 0})
            await wait_for(
                q.get_queue_stats, lambda s: not s.workers, what="the reaper to recover it"
            )
    (line,) = [r for r in _library(caplog) if "recovered" in r.getMessage()]
    assert line.job_ids == [j.id for j in jobs]  # type: ignore[attr-defined]
    assert all(j.id in line.getMessage() for j in jobs), line.getMessage()
    assert all(getattr(r, "queue", None) == "default" for r in _library(caplog))


async def test_every_library_line_carries_its_queue(
    make_settings: Callable[..., QueueSettings], caplog: pytest.LogCaptureFixture
) -> None:
    aq = AffinityQueue(make_settings(max_attempts=2, retry_backoff_ms=1, worker_count=2))
    release = asyncio.Event()

    @aq.handler("fail")
    async def fail(payload: None) -> None:
        raise KeyError("missing")

    @aq.handler("slow", timeout_s=0.05)
    async def slow(payload: None) -> None:
        await release.wait()

    with caplog.at_level(logging.DEBUG, logger="affinity_queue"):
        async with aq:
            q = aq.queue()
            await q.add(Task(type="fail", identify_tag="a"))
            await q.add(Task(type="nobody", identify_tag="b"))
            await q.add(Task(type="slow", identify_tag="c"))
            await drained(q, 2)
            release.set()
            await drained(q, 3)
    records = _library(caplog)
    kinds = {r.levelname for r in records}
    assert {"INFO", "WARNING", "ERROR"} <= kinds, kinds
    missing = [r.getMessage() for r in records if getattr(r, "queue", None) != "default"]
    assert not missing, missing
