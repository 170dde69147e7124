"""install_exception_handlers: the queue's errors as HTTP answers, one body shape for all."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from affinity_queue import (
    InvalidTaskError,
    QueueUnavailableError,
    TagBacklogFullError,
    Task,
    UnknownJobError,
    install_exception_handlers,
)
from affinity_queue.fastapi import ErrorBody

from .app_support import env_for, load_example, serve

RAISED: dict[str, Exception] = {
    "invalid": InvalidTaskError("task #0: payload: too deep", field="payload"),
    "full": TagBacklogFullError("tenant-a", 5),
    "down": QueueUnavailableError("q", RedisConnectionError("Error connecting to 10.0.0.7:6379")),
    "lost": QueueUnavailableError("q", RedisTimeoutError("Timeout reading from 10.0.0.7:6379")),
    "gone": UnknownJobError("7-00ff"),
}


def _app(**options: bool) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app, **options)

    @app.get("/raise/{what}")
    async def raise_(what: str) -> None:
        raise RAISED[what]

    @app.post("/tasks")
    async def add(task: Task) -> None: ...

    return app


@pytest.mark.parametrize(
    ("what", "status", "error", "context", "retry_after"),
    [
        ("invalid", 422, "invalid_task", {"field": "payload"}, None),
        ("full", 429, "tag_backlog_full", {"identifyTag": "tenant-a", "limit": 5}, "1"),
        ("down", 503, "queue_unavailable", {"maybeWritten": False}, "1"),
        ("lost", 503, "queue_unavailable", {"maybeWritten": True}, "1"),
        ("gone", 404, "unknown_job", {"jobId": "7-00ff"}, None),
    ],
)
async def test_each_error_gets_its_status_and_the_one_body_shape(
    what, status, error, context, retry_after
) -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get(f"/raise/{what}")
    assert response.status_code == status
    body = response.json()
    ErrorBody.model_validate(body)
    assert body == {"error": error, "message": body["message"], **context}
    assert response.headers.get("retry-after") == retry_after
    if status == 503:  # the cause and Redis's address go to the log only
        assert "10.0.0.7" not in response.text
        written = "the task may have been" if context["maybeWritten"] else "nothing was"
        assert body["message"] == f"the queue is unavailable; {written} written"
    else:
        assert body["message"] == str(RAISED[what])


@pytest.mark.parametrize("request_validation", [True, False])
async def test_request_validation_takes_the_shape_unless_turned_off(request_validation) -> None:
    transport = httpx.ASGITransport(app=_app(request_validation=request_validation))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post("/tasks", json={"type": "t", "identifyTag": "a", "x": 1})
    assert response.status_code == 422
    body = response.json()
    assert isinstance(body["detail"], list)
    if request_validation:
        assert body["error"] == "invalid_request" and "body.x: Extra inputs" in body["message"]
    else:
        assert set(body) == {"detail"}  # FastAPI's own answer


async def test_the_example_app_answers_404_in_the_shape_of_its_other_errors(
    monkeypatch, make_settings
) -> None:
    example = load_example(monkeypatch, env_for(make_settings()))
    async with serve(example.app) as http:
        missing = await http.get("/jobs/high-priority/1-00")
        invalid = await http.post("/tasks", json={"type": "t", "identifyTag": " "})
    assert missing.status_code == 404 and invalid.status_code == 422
    assert missing.json() == {
        "error": "unknown_job",
        "message": "no job '1-00' (never added, or its record expired)",
        "jobId": "1-00",
    }
    assert {"error", "message"} <= set(invalid.json())
