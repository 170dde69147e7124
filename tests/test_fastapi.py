"""The FastAPI glue and the example app, through their lifespan, on the private Redis.

No `from __future__ import annotations`: route functions defined inside tests annotate with
local names, which FastAPI must resolve when the route is declared.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from affinity_queue import (
    AffinityQueue,
    LifecycleError,
    QueueService,
    QueueServiceDep,
    QueueSettings,
    UnknownQueueError,
    WorkerService,
    WorkerServiceDep,
    get_queue,
    get_worker,
)

from .app_support import env_for, load_example, serve
from .redis_server import free_port
from .support import wait_for


@pytest.fixture
def example_env(make_settings: Callable[..., QueueSettings]) -> Callable[..., dict[str, str]]:
    def make(**overrides: Any) -> dict[str, str]:
        return env_for(make_settings(worker_count=2, max_batch_size=3, **overrides))

    return make


async def _stats(http: httpx.AsyncClient, path: str = "/queue/stats") -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _finished(http: httpx.AsyncClient, total: int, path: str = "/queue/stats") -> Any:
    return await wait_for(
        lambda: _stats(http, path),
        lambda s: s["completed"] + s["failed"] >= total,
        what=f"{total} jobs finished ({path})",
    )


async def test_example_processes_tasks(monkeypatch, example_env) -> None:
    example = load_example(monkeypatch, example_env())
    async with serve(example.app) as http:
        task = {"type": "send-email", "identifyTag": "company-1", "payload": {"to": "a@b.c"}}
        response = await http.post("/tasks", json=task)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["message"] and body["task"] == task
        first = body["jobId"]

        response = await http.post("/tasks/batch", params={"count": 9, "companies": 3})
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["count"] == 9 and len(set(batch["jobIds"])) == 9

        failing = {"type": "process-data", "identifyTag": "company-2", "payload": {"fail": True}}
        failed_id = (await http.post("/tasks", json=failing)).json()["jobId"]
        unknown = {"type": "no-such-type", "identifyTag": "company-3", "payload": None}
        unknown_id = (await http.post("/tasks", json=unknown)).json()["jobId"]

        stats = await _finished(http, 12)
        assert (stats["completed"], stats["failed"]) == (10, 2)
        assert stats["pending"] == stats["assigned"] == stats["active"] == 0
        assert stats["queue"] == "default" and stats["leader"] is not None
        assert len(stats["workers"]) == 2

        job = (await http.get(f"/jobs/{first}")).json()
        assert job["status"] == "completed" and job["identifyTag"] == "company-1"
        assert job["result"]["status"] == "sent" and job["payload"] == {"to": "a@b.c"}
        assert job["workerId"] in {w["workerId"] for w in stats["workers"]}
        job = (await http.get(f"/jobs/{failed_id}")).json()
        assert job["status"] == "failed" and job["error"]["type"] == "ValueError"
        job = (await http.get(f"/jobs/{unknown_id}")).json()
        assert job["status"] == "failed" and "no-such-type" in job["error"]["message"]


async def test_high_priority_queue_is_separate(monkeypatch, example_env) -> None:
    example = load_example(monkeypatch, example_env())
    hp = example.aq.settings("high-priority")
    default = example.aq.settings()
    assert hp.pending_queue_name != default.pending_queue_name
    assert hp.worker_queue_prefix != default.worker_queue_prefix
    assert hp.worker_state_prefix != default.worker_state_prefix
    async with serve(example.app) as http:
        task = {"type": "generate-invoice", "identifyTag": "vip", "payload": {}}
        response = await http.post("/tasks/high-priority", json=task)
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        stats = await _finished(http, 1, "/queue/stats/high-priority")
        assert stats["queue"] == "high-priority" and stats["completed"] == 1
        job = (await http.get(f"/jobs/high-priority/{job_id}")).json()
        assert job["status"] == "completed" and job["result"]["status"] == "generated"
        default_stats = await _stats(http)
        assert default_stats["completed"] == default_stats["pending"] == 0


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"type": "send-email", "payload": {}}, "identifyTag"),
        ({"type": "", "identifyTag": "t"}, "type"),
        ({"type": 5, "identifyTag": "t"}, "type"),
        ({"type": "send-email", "identifyTag": ["t"]}, "identifyTag"),
        ([], "body"),
        ("not json", "body"),
    ],
)
async def test_bad_bodies_get_422_with_a_message(monkeypatch, example_env, body, mentions) -> None:
    example = load_example(monkeypatch, example_env())
    async with serve(example.app) as http:
        for path in ("/tasks", "/tasks/high-priority"):
            if isinstance(body, str):
                response = await http.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            else:
                response = await http.post(path, json=body)
            assert response.status_code == 422, response.text
            assert mentions in response.json()["message"]
            assert isinstance(response.json()["detail"], list)
        stats = await _stats(http)
        assert stats["pending"] == 0  # nothing was written


async def test_bad_batch_parameters_get_422(monkeypatch, example_env) -> None:
    example = load_example(monkeypatch, example_env())
    async with serve(example.app) as http:
        for params in ({"count": 0}, {"count": 1001}, {"companies": "many"}):
            response = await http.post("/tasks/batch", params=params)
            assert response.status_code == 422, response.text
            assert "query." in response.json()["message"]


async def test_payload_over_the_limit_gets_422(monkeypatch, example_env) -> None:
    example = load_example(monkeypatch, example_env(max_payload_bytes=64))
    async with serve(example.app) as http:
        task = {"type": "send-email", "identifyTag": "t", "payload": {"text": "x" * 100}}
        response = await http.post("/tasks", json=task)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "payload"
        assert "MAX_PAYLOAD_BYTES" in response.json()["message"]


async def test_a_full_tag_backlog_gets_429(monkeypatch, example_env) -> None:
    # No scheduler runs (APP_ROLE=WORKER only), so the tasks stay pending.
    example = load_example(monkeypatch, example_env(max_pending_per_tag=2, app_role="WORKER"))
    async with serve(example.app) as http:
        task = {"type": "send-email", "identifyTag": "busy", "payload": {}}
        for _ in range(2):
            assert (await http.post("/tasks", json=task)).status_code == 202
        response = await http.post("/tasks", json=task)
        assert response.status_code == 429, response.text
        assert "MAX_PENDING_PER_TAG" in response.json()["message"]
        assert response.headers["retry-after"] == "1"
        other = {**task, "identifyTag": "quiet"}
        assert (await http.post("/tasks", json=other)).status_code == 202


async def test_unknown_job_gets_404(monkeypatch, example_env) -> None:
    example = load_example(monkeypatch, example_env())
    async with serve(example.app) as http:
        for path in ("/jobs/999999", "/jobs/not-a-number", "/jobs/high-priority/1"):
            response = await http.get(path)
            assert response.status_code == 404, response.text
            assert "no job" in response.json()["message"]  # the shape of every error


async def test_redis_down_gets_503(monkeypatch, example_env) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    example = load_example(monkeypatch, example_env(redis_url=closed, shutdown_grace_period_ms=100))
    async with serve(example.app) as http:
        task = {"type": "send-email", "identifyTag": "t", "payload": {}}
        for method, path in [
            ("POST", "/tasks"),
            ("POST", "/tasks/high-priority"),
            ("POST", "/tasks/batch"),
            ("GET", "/queue/stats"),
            ("GET", "/queue/stats/high-priority"),
            ("GET", "/jobs/1"),
        ]:
            response = await http.request(
                method, path, json=task if path != "/tasks/batch" else None
            )
            assert response.status_code == 503, (path, response.text)
            assert "unavailable" in response.json()["message"]
            assert response.json()["maybeWritten"] is False  # nothing could be sent
            assert response.headers["retry-after"] == "1"


# -- the dependencies, on an app of the test's own ----------------------------------------------
def _two_queues(make_settings: Callable[..., QueueSettings]) -> AffinityQueue:
    default = make_settings()
    other = make_settings(
        pending_queue_name=f"{default.pending_queue_name}-other",
        worker_queue_prefix=f"{default.worker_queue_prefix}-other",
        worker_state_prefix=f"{default.worker_state_prefix}-other",
    )
    return AffinityQueue(default, queues={"other": other})


async def test_dependencies_give_the_declared_queues(make_settings) -> None:
    aq = _two_queues(make_settings)
    app = FastAPI(lifespan=aq.lifespan)

    @app.get("/names")
    async def names(
        queue: QueueServiceDep,
        worker: WorkerServiceDep,
        other: Annotated[QueueService, Depends(get_queue("other"))],
        other_worker: Annotated[WorkerService, Depends(get_worker("other", aq))],
        checked: Annotated[QueueService, Depends(get_queue("other", aq))],
    ) -> list[str]:
        assert queue is aq.queue() and worker is aq.worker()
        assert other is checked is aq.queue("other")
        assert other_worker is aq.worker("other")
        return [queue.name, worker.name, other.name, other_worker.name]

    @app.get("/missing")
    async def missing(queue: Annotated[QueueService, Depends(get_queue("missing"))]) -> str:
        return queue.name

    async with serve(app) as http:
        response = await http.get("/names")
        assert response.json() == ["default", "default", "other", "other"]
        response = await http.get("/missing")
        assert response.status_code == 500
        assert response.json()["detail"] == (
            "no queue named 'missing'; declared queues: default, other"
        )


def test_undeclared_name_fails_when_the_dependency_is_made(make_settings) -> None:
    aq = _two_queues(make_settings)
    for factory in (get_queue, get_worker):
        with pytest.raises(UnknownQueueError) as caught:
            factory("high-priority", aq)
        assert caught.value.declared == ["default", "other"]
        assert "declared queues: default, other" in str(caught.value)


async def test_without_the_lifespan_state_the_error_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/")
    async def root(queue: QueueServiceDep) -> str:
        return queue.name

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        with pytest.raises(LifecycleError, match=r"FastAPI\(lifespan=aq.lifespan\)"):
            await http.get("/")


async def test_combined_with_the_apps_own_lifespan(make_settings) -> None:
    """The README's pattern: open the app's resources first, start the queue inside them."""
    aq = AffinityQueue(make_settings())
    events: list[str] = []
    done = asyncio.Event()

    class Database:
        def __init__(self) -> None:
            self.open = False

    db = Database()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        db.open = True
        events.append("db open")
        async with aq.lifespan(app) as queue_state:
            yield {**queue_state, "db": db}
        events.append("queue stopped")
        db.open = False

    @aq.handler("record")
    async def record(payload: Any) -> bool:
        done.set()
        return db.open

    app = FastAPI(lifespan=lifespan)

    @app.post("/record")
    async def add(queue: QueueServiceDep) -> str:
        return (await queue.add({"type": "record", "identifyTag": "t"})).id

    async with serve(app) as http:
        job_id = (await http.post("/record")).json()
        await asyncio.wait_for(done.wait(), 10)
        job = await wait_for(
            lambda: aq.queue().get_job(job_id),
            lambda j: j is not None and j.status == "completed",
            what="job completed",
        )
        assert job is not None and job.result is True  # the handler saw the open database
    assert events == ["db open", "queue stopped"] and not db.open


async def test_dependencies_work_in_websocket_routes_and_background_tasks(make_settings) -> None:
    from fastapi import BackgroundTasks, WebSocket
    from starlette.types import Message

    settings = make_settings(app_role="SCHEDULER")  # no workers: the jobs stay pending
    other_name = f"{settings.pending_queue_name}-o"
    other_settings = make_settings(
        app_role="SCHEDULER",
        pending_queue_name=other_name,
        worker_queue_prefix=f"{other_name}-wq",
        worker_state_prefix=f"{other_name}-ws",
    )
    aq = AffinityQueue(settings, queues={"other": other_settings})
    app = FastAPI(lifespan=aq.lifespan)
    Other = Annotated[QueueService, Depends(get_queue("other", aq))]

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, queue: QueueServiceDep, other: Other) -> None:
        await websocket.accept()
        job = await queue.add({"type": "t", "identifyTag": await websocket.receive_text()})
        await websocket.send_json({"id": job.id, "queues": [queue.name, other.name]})
        await websocket.close()

    @app.post("/later", status_code=202)
    async def later(tasks: BackgroundTasks, queue: QueueServiceDep) -> None:
        tasks.add_task(queue.add, {"type": "t", "identifyTag": "later"})

    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "from-ws"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "server": ("example", 80),
        "client": ("test", 1),
        "subprotocols": [],
    }
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app) as manager:
        await asyncio.wait_for(manager.app(scope, receive, send), 10)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://example"
        ) as http:
            assert (await http.post("/later")).status_code == 202
        pending = (await aq.queue().get_queue_stats()).pending
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    import json

    assert json.loads(sent[1]["text"])["queues"] == ["default", "other"]
    assert pending == 2  # one from the WebSocket route, one from the background task
