"""The original package's example app, in FastAPI.

Run it on a machine without Redis (embedded mode, one process)::

    APP_ROLE=BOTH REDIS_URL=memory:// uvicorn example_app.main:app

or against a Redis server, with the API and any number of worker processes::

    REDIS_URL=redis://localhost:6379/0 uvicorn example_app.main:app
    APP_ROLE=WORKER REDIS_URL=redis://localhost:6379/0 affinity-queue worker example_app.main:aq

Every setting comes from the environment (or ``.env``): see ``QueueSettings``. The high-priority
queue reads ``HIGH_PRIORITY__<NAME>`` first and the default queue's variables after, with key
names of its own (``<name>-high-priority``), so two apps that set different
``PENDING_QUEUE_NAME`` etc. share one Redis without meeting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from affinity_queue import (
    AffinityQueue,
    Job,
    JobContext,
    QueueService,
    QueueServiceDep,
    QueueSettings,
    QueueStats,
    Task,
    UnknownJobError,
    get_queue,
)
from affinity_queue.fastapi import ERROR_RESPONSES, install_exception_handlers
from affinity_queue.observability.metrics import metrics_app

logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")
log = logging.getLogger("example_app")

HIGH_PRIORITY = "high-priority"
TASK_TYPES = ("send-email", "generate-invoice", "process-data")
MAX_SIMULATED_WORK_MS = 5_000


settings = QueueSettings()
# HIGH_PRIORITY__MAX_BATCH_SIZE etc. first, then the plain variables; key names of its own.
aq = AffinityQueue(settings, queues={HIGH_PRIORITY: QueueSettings.for_queue(HIGH_PRIORITY)})


# -- handlers: the same three on both queues -------------------------------------------------
def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _simulate_work(payload: Any) -> None:
    """``{"durationMs": 200}`` in a payload makes the handler take that long (capped)."""
    if isinstance(payload, dict) and isinstance(payload.get("durationMs"), int | float):
        await asyncio.sleep(min(max(payload["durationMs"], 0), MAX_SIMULATED_WORK_MS) / 1000)


@aq.handler("send-email")
@aq.handler("send-email", queue=HIGH_PRIORITY)
async def send_email(payload: Any, ctx: JobContext) -> dict[str, Any]:
    log.info("[%s] send-email for %s on %s", ctx.queue, ctx.identify_tag, ctx.worker_id)
    await _simulate_work(payload)
    return {"status": "sent", "messageId": f"MSG-{_now_ms()}", "workerId": ctx.worker_id}


@aq.handler("generate-invoice")
@aq.handler("generate-invoice", queue=HIGH_PRIORITY)
async def generate_invoice(payload: Any, ctx: JobContext) -> dict[str, Any]:
    log.info("[%s] generate-invoice for %s on %s", ctx.queue, ctx.identify_tag, ctx.worker_id)
    await _simulate_work(payload)
    return {"status": "generated", "invoiceId": f"INV-{_now_ms()}", "workerId": ctx.worker_id}


@aq.handler("process-data")
@aq.handler("process-data", queue=HIGH_PRIORITY)
async def process_data(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """``{"fail": true}`` in the payload makes it fail, to show a failed job."""
    log.info("[%s] process-data for %s on %s", ctx.queue, ctx.identify_tag, ctx.worker_id)
    await _simulate_work(payload)
    if isinstance(payload, dict) and payload.get("fail") is True:
        raise ValueError("process-data failed because the payload asked it to")
    return {"status": "completed", "processId": f"PROC-{_now_ms()}", "workerId": ctx.worker_id}


# -- the HTTP API ------------------------------------------------------------------------------
app = FastAPI(
    title="affinity-queue example",
    description="The nestjs-affinity-queue example app, in FastAPI.",
    lifespan=aq.lifespan,
)

# Prometheus scrapes GET /metrics: this process's counters and the queues' gauges.
app.mount("/metrics", metrics_app(aq))

HighPriorityQueue = Annotated[QueueService, Depends(get_queue(HIGH_PRIORITY, aq))]


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class TaskAccepted(_CamelModel):
    message: str
    job_id: str
    task: Task


class BatchAccepted(_CamelModel):
    message: str
    count: int
    job_ids: list[str]


install_exception_handlers(app)  # 422, 429, 503, 404 in one body shape; see the README

Responses = dict[int | str, dict[str, Any]]
_ERRORS: Responses = {503: ERROR_RESPONSES[503], 422: ERROR_RESPONSES[422]}
_ADD_ERRORS: Responses = {429: ERROR_RESPONSES[429], **_ERRORS}
_BODY_ERRORS: Responses = {
    400: {"description": "The body is not UTF-8 (FastAPI answers 400 before validation)"},
    **_ADD_ERRORS,
}
_JOB_ERRORS: Responses = {404: ERROR_RESPONSES[404], **_ERRORS}


@app.post("/tasks", status_code=status.HTTP_202_ACCEPTED, responses=_BODY_ERRORS)
async def add_task(task: Task, queue: QueueServiceDep) -> TaskAccepted:
    """Queue one task on the default queue."""
    job = await queue.add(task)
    return TaskAccepted(message="Task added to the queue", job_id=job.id, task=task)


@app.post("/tasks/batch", status_code=status.HTTP_202_ACCEPTED, responses=_ADD_ERRORS)
async def add_batch(
    queue: QueueServiceDep,
    count: Annotated[int, Query(ge=1, le=1000, description="How many tasks")] = 10,
    companies: Annotated[int, Query(ge=1, le=100, description="Spread over this many tags")] = 3,
) -> BatchAccepted:
    """Queue ``count`` tasks over the tags ``company-1`` .. ``company-<companies>``."""
    tasks = [
        Task(
            type=TASK_TYPES[i % len(TASK_TYPES)],
            identify_tag=f"company-{i % companies + 1}",
            payload={"index": i},
        )
        for i in range(count)
    ]
    jobs = await queue.add_bulk(tasks)
    return BatchAccepted(
        message=f"{count} tasks added over {companies} companies",
        count=len(jobs),
        job_ids=[j.id for j in jobs],
    )


@app.get("/queue/stats", responses=_ERRORS)
async def queue_stats(queue: QueueServiceDep) -> QueueStats:
    return await queue.get_queue_stats()


@app.get("/jobs/{job_id}", responses=_JOB_ERRORS)
async def get_job(job_id: str, queue: QueueServiceDep) -> Job:
    return await _job_or_404(queue, job_id)


@app.post("/tasks/high-priority", status_code=status.HTTP_202_ACCEPTED, responses=_BODY_ERRORS)
async def add_high_priority_task(task: Task, queue: HighPriorityQueue) -> TaskAccepted:
    """Queue one task on the high-priority queue (its own keys, scheduler and workers)."""
    job = await queue.add(task)
    return TaskAccepted(message="Task added to the high-priority queue", job_id=job.id, task=task)


@app.get("/queue/stats/high-priority", responses=_ERRORS)
async def high_priority_stats(queue: HighPriorityQueue) -> QueueStats:
    return await queue.get_queue_stats()


@app.get("/jobs/high-priority/{job_id}", responses=_JOB_ERRORS)
async def get_high_priority_job(job_id: str, queue: HighPriorityQueue) -> Job:
    return await _job_or_404(queue, job_id)


async def _job_or_404(queue: QueueService, job_id: str) -> Job:
    job = await queue.get_job(job_id)
    if job is None:
        raise UnknownJobError(job_id)  # a 404 in the shape of every other error
    return job


# -- the dashboard -----------------------------------------------------------------------------
_basic = HTTPBasic(auto_error=False)


def dashboard_user(credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> str:
    """HTTP Basic against DASHBOARD_PASSWORD (any user name): an example of an auth dependency."""
    expected = os.environ.get("DASHBOARD_PASSWORD", "")
    given = credentials.password if credentials else ""
    if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "log in", headers={"WWW-Authenticate": "Basic"}
        )
    return credentials.username if credentials else ""


if os.environ.get("DASHBOARD_PASSWORD"):
    app.mount("/dashboard", aq.dashboard(auth=dashboard_user))
else:
    # A local demo only: anyone who can reach the port can pause queues and requeue jobs.
    log.warning("the dashboard at /dashboard is open to all: set DASHBOARD_PASSWORD to protect it")
    app.mount("/dashboard", aq.dashboard(allow_unauthenticated=True))
