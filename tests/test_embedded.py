"""Embedded mode: ``REDIS_URL=memory://`` runs the example app in one process, no Redis server."""

from __future__ import annotations

import logging
import secrets
import sys

import pytest

from affinity_queue import AffinityQueue, QueueSettings, Role

from .app_support import env_for, load_example, serve
from .support import wait_for


def _memory_settings(url: str = "memory://") -> QueueSettings:
    name = f"t-{secrets.token_hex(6)}"
    return QueueSettings(
        _env_file=None,
        redis_url=url,
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
        heartbeat_interval_ms=300,
        heartbeat_timeout_ms=2000,
        election_lock_ttl_ms=2000,
        shutdown_grace_period_ms=2000,
    )


async def test_example_app_runs_a_task_end_to_end_in_memory(monkeypatch, caplog) -> None:
    # A URL of its own: the first client of an in-memory store announces embedded mode.
    url = f"memory://{secrets.token_hex(4)}"
    with caplog.at_level(logging.WARNING, logger="affinity_queue"):
        example = load_example(monkeypatch, env_for(_memory_settings(url), APP_ROLE="BOTH"))
    assert any(
        "embedded mode" in r.message and "lost when it exits" in r.message for r in caplog.records
    )
    async with serve(example.app) as http:
        task = {"type": "process-data", "identifyTag": "company-1", "payload": {"rows": 3}}
        response = await http.post("/tasks", json=task)
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        hp = await http.post("/tasks/high-priority", json=task)
        assert hp.status_code == 202, hp.text

        async def job() -> dict[str, object]:
            body: dict[str, object] = (await http.get(f"/jobs/{job_id}")).json()
            return body

        done = await wait_for(job, lambda j: j["status"] == "completed", what="job completed")
        assert done["result"] == {
            "status": "completed",
            "processId": done["result"]["processId"],  # type: ignore[index]
            "workerId": done["workerId"],
        }
        stats = (await http.get("/queue/stats")).json()
        assert stats["completed"] == 1 and stats["leader"] is not None
        await wait_for(
            lambda: http.get("/queue/stats/high-priority"),
            lambda r: r.json()["completed"] == 1,
            what="high-priority job completed",
        )


async def test_one_store_per_url_shared_by_every_client() -> None:
    """Two AffinityQueues on the same ``memory://`` URL see one store, as with one Redis."""
    settings = _memory_settings()
    producer = AffinityQueue(settings.model_copy(update={"app_role": Role.SCHEDULER}))
    worker = AffinityQueue(settings.model_copy(update={"app_role": Role.WORKER}))

    @worker.handler("echo")
    def echo(payload: object) -> object:
        return payload

    async with producer, worker:
        job = await producer.queue().add({"type": "echo", "identifyTag": "t", "payload": [1]})
        done = await wait_for(
            lambda: producer.queue().get_job(job.id),
            lambda j: j is not None and j.status == "completed",
            what="job completed",
        )
        assert done is not None and done.result == [1]


def test_without_the_memory_extra_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    with pytest.raises(ImportError, match=r"pip install 'affinity-queue\[memory\]'"):
        AffinityQueue(_memory_settings(f"memory://{secrets.token_hex(4)}"))
