"""Real processes on the private Redis: two uvicorn nodes with APP_ROLE=BOTH, and the worker
command. Every child is ended by its own pid; queues are isolated by name."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from affinity_queue import AffinityQueue, Job, JobStatus, QueueSettings, Role

from .app_support import CONSOLE_SCRIPT, Process, subprocess_env, until_serving, uvicorn
from .redis_server import free_port
from .support import order_of, wait_for


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.end()


async def _stats(http: httpx.AsyncClient, path: str = "/queue/stats") -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _term(leader: dict[str, Any]) -> tuple[str, int, int]:
    """Who leads and in which term (its heartbeat time moves on)."""
    return leader["nodeId"], leader["pid"], leader["fence"]


def _check_affinity(jobs: list[Job]) -> None:
    """Per tag: one worker at a time (IDENTIFY_TAG_CONCURRENCY=1), in the order of arrival."""
    by_tag: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_tag[job.identify_tag].append(job)
    for tag, tag_jobs in by_tag.items():
        runs = sorted(tag_jobs, key=lambda j: (j.started_at or datetime.min, order_of(j.id)))
        order = [order_of(j.id) for j in runs]
        assert order == sorted(order), f"{tag}: not FIFO"
        for earlier, later in itertools.pairwise(runs):
            assert earlier.finished_at and later.started_at
            assert later.started_at >= earlier.finished_at, f"{tag}: two workers at once"


async def test_two_uvicorn_nodes_elect_one_leader_and_share_the_work(
    make_settings: Callable[..., QueueSettings], processes: list[Process], tmp_path: Path
) -> None:
    # Leases long enough that a loaded machine does not change leaders mid-test; the failover
    # below comes from the leader resigning, not from its lease running out.
    settings = make_settings(
        worker_count=2, max_batch_size=4, election_lock_ttl_ms=5000, heartbeat_timeout_ms=5000
    )
    env = subprocess_env(settings, APP_ROLE="BOTH")
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        processes.append(uvicorn(port, env, tmp_path / f"node{i}.log"))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    await asyncio.gather(*(until_serving(p, u) for p, u in zip(processes, urls, strict=True)))
    pids = {p.pid for p in processes}

    a = httpx.AsyncClient(base_url=urls[0], timeout=10)
    b = httpx.AsyncClient(base_url=urls[1], timeout=10)
    async with a, b:
        stats = await wait_for(
            lambda: _stats(a),
            lambda s: s["leader"] is not None and len(s["workers"]) == 4,
            what="a leader and both nodes' workers",
        )
        leader = stats["leader"]
        assert leader["pid"] in pids
        assert {w["pid"] for w in stats["workers"]} == pids
        assert _term((await _stats(b))["leader"]) == _term(leader)  # seen alike from both nodes
        hp = await wait_for(
            lambda: _stats(a, "/queue/stats/high-priority"),
            lambda s: s["leader"] is not None,
            what="a high-priority leader",
        )
        assert hp["leader"]["pid"] in pids

        # 24 tasks over 4 tags in one batch through node A, 12 one by one through node B.
        response = await a.post("/tasks/batch", params={"count": 24, "companies": 4})
        assert response.status_code == 202, response.text
        ids = list(response.json()["jobIds"])
        for i in range(12):
            task = {
                "type": "send-email",
                "identifyTag": f"company-{i % 4 + 1}",
                "payload": {"durationMs": 20},
            }
            response = await b.post("/tasks", json=task)
            assert response.status_code == 202, response.text
            ids.append(response.json()["jobId"])

        stats = await wait_for(
            lambda: _stats(b),
            lambda s: s["completed"] + s["failed"] >= 36,
            timeout_s=30,
            what="36 jobs finished",
        )
        assert (stats["completed"], stats["failed"], stats["pending"]) == (36, 0, 0)
        assert _term(stats["leader"]) == _term(leader)  # no change of leader while working
        clients = [a, b]
        jobs = [
            Job.model_validate((await clients[i % 2].get(f"/jobs/{job_id}")).json())
            for i, job_id in enumerate(ids)
        ]
        assert all(j.status is JobStatus.COMPLETED for j in jobs)
        worker_pid = {w["workerId"]: w["pid"] for w in stats["workers"]}
        assert {worker_pid[j.worker_id or ""] for j in jobs} == pids  # both nodes worked
        _check_affinity(jobs)

        # The leader stops gracefully: it resigns, the other node takes over at once.
        leading = next(p for p in processes if p.pid == leader["pid"])
        other, other_http = (processes[1], b) if leading is processes[0] else (processes[0], a)
        leading.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its graceful shutdown is complete.
        assert await leading.exited(timeout_s=20) in (0, -signal.SIGTERM), leading.output()
        assert "Application shutdown complete" in leading.output()
        stats = await wait_for(
            lambda: _stats(other_http),
            lambda s: s["leader"] is not None and s["leader"]["pid"] == other.pid,
            timeout_s=10,
            what="the other node leads",
        )
        assert {w["pid"] for w in stats["workers"]} == {other.pid}  # the leaver deregistered
        task = {"type": "generate-invoice", "identifyTag": "company-1", "payload": {}}
        job_id = (await other_http.post("/tasks", json=task)).json()["jobId"]
        await wait_for(
            lambda: other_http.get(f"/jobs/{job_id}"),
            lambda r: r.json()["status"] == "completed",
            what="a task after the failover",
        )


async def test_worker_command_runs_tasks_and_stops_gracefully_on_sigterm(
    make_settings: Callable[..., QueueSettings], processes: list[Process], tmp_path: Path
) -> None:
    settings = make_settings(worker_count=2)
    worker = Process.start(
        [CONSOLE_SCRIPT, "worker", "example_app.main:aq"],
        subprocess_env(settings, APP_ROLE="WORKER"),
        tmp_path / "worker.log",
    )
    processes.append(worker)
    scheduler = AffinityQueue(settings.model_copy(update={"app_role": Role.SCHEDULER}))
    async with scheduler:
        queue = scheduler.queue()
        await wait_for(
            queue.get_queue_stats,
            lambda s: [w.pid for w in s.workers] == [worker.pid] * 2,
            timeout_s=30,
            what="the command's two workers registered",
        )
        jobs = await queue.add_bulk(
            {"type": "process-data", "identifyTag": f"tag-{i % 3}", "payload": {"i": i}}
            for i in range(10)
        )
        await wait_for(
            queue.get_queue_stats,
            lambda s: s.completed == 10,
            what="10 jobs completed by the command",
        )
        for job in jobs:
            done = await queue.get_job(job.id)
            assert done is not None and done.status is JobStatus.COMPLETED

        # A job still running at SIGTERM finishes within the grace period before the exit.
        slow = await queue.add(
            {"type": "send-email", "identifyTag": "slow", "payload": {"durationMs": 800}}
        )
        await wait_for(
            lambda: queue.get_job(slow.id),
            lambda j: j is not None and j.status is JobStatus.ACTIVE,
            what="the slow job started",
        )
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.exited(timeout_s=20) == 0, worker.output()
        done = await queue.get_job(slow.id)
        assert done is not None and done.status is JobStatus.COMPLETED
        stats = await queue.get_queue_stats()
        assert stats.workers == []  # deregistered, not left to expire
        assert stats.completed == 11

    output = worker.output()
    assert "role WORKER" in output
    assert f"Redis {settings.resolved_redis_url}" in output
    assert "handlers: generate-invoice, process-data, send-email" in output
    assert "SIGTERM: stopping gracefully" in output and output.rstrip().endswith("stopped")
