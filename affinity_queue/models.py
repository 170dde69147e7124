"""Data that crosses the API: pydantic models with the original's camelCase JSON names."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, JsonValue, StringConstraints
from pydantic.alias_generators import to_camel

from .keys import tag_from_id

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        frozen=True,
    )


class Task(_Model):
    """What a producer submits. ``identifyTag`` and ``identify_tag`` are both accepted."""

    type: NonEmpty
    identify_tag: NonEmpty = Field(
        validation_alias=AliasChoices("identifyTag", "identify_tag"),
        serialization_alias="identifyTag",
    )
    payload: JsonValue = None


class JobStatus(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


class JobError(_Model):
    type: str
    message: str
    traceback: str = ""


class Job(_Model):
    id: str
    type: str
    identify_tag: str
    payload: JsonValue
    status: JobStatus
    worker_id: str | None = None
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JsonValue = None
    error: JobError | None = None

    @property
    def task(self) -> Task:
        return Task(type=self.type, identify_tag=self.identify_tag, payload=self.payload)

    @classmethod
    def from_redis(cls, job_id: str, h: dict[str, str]) -> Job:
        return cls(
            id=job_id,
            type=h["type"],
            identify_tag=h["tag"],
            payload=json.loads(h["payload"]),
            status=JobStatus(h["status"]),
            worker_id=h.get("worker") or None,
            attempts=int(h.get("attempts", 0)),
            created_at=_ms_to_datetime(h.get("created")),
            started_at=_ms_to_datetime(h.get("started")),
            finished_at=_ms_to_datetime(h.get("finished")),
            result=json.loads(h["result"]) if "result" in h else None,
            error=JobError.model_validate_json(h["error"]) if "error" in h else None,
        )


class WorkerState(_Model):
    worker_id: str
    status: str
    current_identify_tag: str | None = None
    current_batch_size: int = 0
    queue_length: int = 0
    active_job_id: str | None = None
    host: str | None = None
    pid: int | None = None

    @classmethod
    def from_redis(cls, worker_id: str, h: dict[str, str], queue_length: int) -> WorkerState:
        tid = h.get("tid") or ""
        return cls(
            worker_id=worker_id,
            status=h.get("status", "gone"),
            current_identify_tag=tag_from_id(tid) if tid else None,
            current_batch_size=int(h.get("batch", 0)),
            queue_length=queue_length,
            active_job_id=h.get("active") or None,
            host=h.get("host"),
            pid=int(h["pid"]) if h.get("pid") else None,
        )


class LeaderInfo(_Model):
    node_id: str
    host: str
    pid: int
    fence: int
    since: datetime
    last_heartbeat: datetime

    @classmethod
    def from_redis(cls, h: dict[str, str]) -> LeaderInfo | None:
        if "fence" not in h:
            return None
        return cls(
            node_id=h["node"],
            host=h["host"],
            pid=int(h["pid"]),
            fence=int(h["fence"]),
            since=_ms_to_datetime(h["since"]) or datetime.now(UTC),
            last_heartbeat=_ms_to_datetime(h["heartbeat"]) or datetime.now(UTC),
        )


class QueueStats(_Model):
    queue: str
    pending: int
    assigned: int
    active: int
    completed: int
    failed: int
    workers: list[WorkerState]
    leader: LeaderInfo | None


class JobContext(_Model):
    """What a handler that declares a second parameter receives."""

    job_id: str
    identify_tag: str
    worker_id: str
    attempt: int
    queue: str


def _ms_to_datetime(ms: Any) -> datetime | None:
    if ms in (None, ""):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)
