"""An AffinityQueue starts again after aclose(), on a new event loop, with fresh clients: the
common test pattern enters one module-level app in several tests."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from affinity_queue import AffinityQueue, LifecycleError, QueueSettings

from .app_support import env_for, load_example
from .support import wait_for

with warnings.catch_warnings():
    # Starlette's TestClient asks for httpx2 but still runs on httpx, as this project has it.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

SettingsFactory = Callable[..., QueueSettings]


def test_a_module_level_app_serves_two_test_clients_in_turn(
    monkeypatch: pytest.MonkeyPatch, make_settings: SettingsFactory
) -> None:
    """Each ``with TestClient(app)`` runs the lifespan on an event loop of its own."""
    example = load_example(monkeypatch, env_for(make_settings()))
    for round_ in range(2):
        with TestClient(example.app) as client:
            task = {"type": "process-data", "identifyTag": "t", "payload": {"round": round_}}
            accepted = client.post("/tasks", json=task)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["jobId"]
            asyncio.run(
                wait_for(
                    partial(_status, client, job_id),
                    lambda status: status == "completed",
                    what=f"round {round_}: job {job_id} completed",
                )
            )


async def _status(client: TestClient, job_id: str) -> Any:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()["status"]


def test_async_with_twice_in_two_event_loops(make_settings: SettingsFactory) -> None:
    """Handlers and service references taken before the first start keep working."""
    aq = AffinityQueue(make_settings())
    results: list[int] = []

    @aq.handler("t")
    async def handle(payload: int) -> int:
        results.append(payload)
        return payload * 10

    queue = aq.queue()

    async def session(payload: int) -> None:
        async with aq:
            job = await queue.add({"type": "t", "identifyTag": "a", "payload": payload})
            assert await queue.wait_for(job.id, timeout_s=10) == payload * 10
            with pytest.raises(LifecycleError, match="already started"):
                await aq.start()

    asyncio.run(session(1))
    asyncio.run(session(2))
    assert results == [1, 2]
