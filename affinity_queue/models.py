"""Data that crosses the API: pydantic models with the original's camelCase JSON names."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

from .keys import tag_from_id

MAX_TAG_BYTES = 1024
"""Longest ``identify_tag``, in bytes of UTF-8: a tag is stored in several keys and members."""
MAX_TYPE_BYTES = 256
"""Longest task ``type``, in bytes of UTF-8."""


NOT_BLANK = r"[^\s\x1c-\x1f]"
"""A character that is not whitespace, by Python's ``str.strip`` (which also strips the
separators U+001C-U+001F): the schema's pattern, so what it admits and what validation accepts
are the same strings."""


def _bounded(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
        if size > limit:
            raise ValueError(f"is {size} bytes of UTF-8; at most {limit} are allowed")
        return value

    return AfterValidator(check)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        frozen=True,
    )


class Task(_Model):
    """What a producer submits. ``identifyTag`` and ``identify_tag`` are both accepted; any other
    field is refused, so a misspelt or unsupported option (``delaySeconds``) is not dropped."""

    model_config = ConfigDict(extra="forbid")

    # The schema states what it can (length in characters, not blank); the validator counts bytes.
    type: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_TYPE_BYTES, pattern=NOT_BLANK),
        _bounded(MAX_TYPE_BYTES),
    ]
    identify_tag: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_TAG_BYTES, pattern=NOT_BLANK),
        _bounded(MAX_TAG_BYTES),
    ] = Field(
        validation_alias=AliasChoices("identifyTag", "identify_tag"),
        serialization_alias="identifyTag",
    )
    payload: JsonValue = None


class JobStatus(StrEnum):
    """pending -> assigned -> active -> completed | failed; delayed before it is due or between
    relaxed retries; cancelled when withdrawn before it ran."""

    PENDING = "pending"
    DELAYED = "delayed"
    ASSIGNED = "assigned"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    """It had not started and never will."""
    REQUESTED = "requested"
    """It is running; its context's ``cancelled`` flag is set (the handler decides)."""
    FINISHED = "finished"
    """It had already completed, failed or been cancelled."""
    UNKNOWN = "unknown"


class JobError(_Model):
    type: str
    message: str
    traceback: str = ""
    attempt: int = 0


class Job(_Model):
    id: str
    type: str
    identify_tag: str
    payload: JsonValue
    status: JobStatus
    worker_id: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    created_at: datetime | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JsonValue = None
    error: JobError | None = None
    history: list[JobError] = []
    progress: JsonValue = None
    """The last value the handler gave ``ctx.set_progress()`` (None if it gave none)."""

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
            max_attempts=int(h.get("max_attempts") or 1),
            created_at=_ms_to_datetime(h.get("created")),
            run_at=_ms_to_datetime(h.get("due")),
            started_at=_ms_to_datetime(h.get("started")),
            finished_at=_ms_to_datetime(h.get("finished")),
            result=json.loads(h["result"]) if "result" in h else None,
            error=JobError.model_validate_json(h["error"]) if "error" in h else None,
            history=[JobError.model_validate(e) for e in json.loads(h.get("history") or "[]")],
            progress=json.loads(h["progress"]) if "progress" in h else None,
        )


def first_active(h: dict[str, str]) -> str | None:
    """The first job of a worker state's active run (``active`` lists its ids): the one that
    runs first, and with a run of several, what the stats call its running job."""
    return next(iter((h.get("active") or "").split()), None)


class WorkerState(_Model):
    worker_id: str
    status: str
    current_identify_tag: str | None = None
    current_batch_size: int = 0
    queue_length: int = 0
    active_job_id: str | None = None
    active_job_started_at: datetime | None = None
    active_job_progress: JsonValue = None
    """The running job's last ``ctx.set_progress()`` value (None if it gave none)."""
    host: str | None = None
    pid: int | None = None

    @classmethod
    def from_redis(
        cls,
        worker_id: str,
        h: dict[str, str],
        queue_length: int,
        active: tuple[str | None, str | None] = (None, None),
    ) -> WorkerState:
        """``active``: the running job's ``started`` and ``progress`` fields."""
        tid = h.get("tid") or ""
        started, progress = active
        return cls(
            worker_id=worker_id,
            status=h.get("status", "gone"),
            current_identify_tag=tag_from_id(tid) if tid else None,
            current_batch_size=int(h.get("batch", 0)),
            queue_length=queue_length,
            active_job_id=first_active(h),
            active_job_started_at=_ms_to_datetime(started),
            active_job_progress=json.loads(progress) if progress else None,
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


class PeriodicInfo(_Model):
    """A periodic task as the leader last recorded it (see ``AffinityQueue.periodic``)."""

    name: str
    type: str
    identify_tag: str
    schedule: str
    """The cron expression and time zone, or ``every <n> s``."""
    next_run_at: datetime | None
    last_run_at: datetime | None
    """The tick (its scheduled time) of the newest task enqueued."""
    last_job_id: str | None

    @classmethod
    def from_redis(cls, name: str, text: str) -> PeriodicInfo:
        h = json.loads(text)
        return cls(
            name=name,
            type=h["type"],
            identify_tag=h["tag"],
            schedule=h["schedule"],
            next_run_at=_ms_to_datetime(h.get("next")),
            last_run_at=_ms_to_datetime(h.get("last")),
            last_job_id=h.get("job"),
        )


class QueueStats(_Model):
    queue: str
    pending: int
    delayed: int
    assigned: int
    active: int
    completed: int
    """Jobs completed since the queue began."""
    failed: int
    """Jobs failed since the queue began (dead letters are listed by ``list_failed``)."""
    cancelled: int
    workers: list[WorkerState]
    leader: LeaderInfo | None
    periodic: list[PeriodicInfo] = []
    """The queue's periodic tasks, as its leader last recorded them, by name."""


class TagInfo(_Model):
    """One tag as its indexes show it (see ``QueueService.get_tags``)."""

    identify_tag: str
    pending: int
    """Jobs in the tag's pending list (not those already queued to a worker, nor delayed ones)."""
    backlog: int = 0
    """Jobs waiting to start, from the tag index: pending, or queued to a worker bound to it."""
    oldest_job_id: str | None
    oldest_created_at: datetime | None
    bound_workers: dict[str, int]
    """Worker id -> batch taken, for each worker bound to the tag."""
    limit: int
    paused: bool
    ready: str | None
    """``bound`` or ``new`` when the tag is in a ready set (placeable now), else None."""


class FailedPage(_Model):
    """A window of dead letters that match a filter (see ``QueueService.find_failed``)."""

    jobs: list[Job]
    next_cursor: int | None
    """Where the next window starts (a rank, newest first), or None when the set was exhausted."""
    examined: int
    total: int


class ActivityBucket(_Model):
    """One minute of a queue's activity, read from the retention indexes."""

    start: datetime
    finished: int
    """Jobs completed or cancelled in the minute."""
    failed: int
    wait_ms: float | None
    """Mean wait (created -> last start) of a sample of the minute's finished jobs."""


@dataclass(slots=True)
class JobContext:
    """What a handler that declares a second parameter receives."""

    job_id: str
    identify_tag: str
    worker_id: str
    attempt: int
    """1 for the first run; grows with every retry and every rerun after a crash."""
    max_attempts: int
    queue: str
    cancelled: bool = False
    """Set (within about one HEARTBEAT_INTERVAL) when ``cancel()`` was called for this job."""
    state: dict[str, Any] = field(default_factory=dict)
    """What the queue's ``on_startup`` hooks returned (merged): a database pool, a client."""
    tag_state: dict[str, Any] = field(default_factory=dict)
    """Lives while this worker holds the tag (the tasks of one batch share it) and is dropped
    when it releases the tag: a tenant's session, cache or open file."""
    _progress: Callable[[Any], Awaitable[None]] | None = field(default=None, repr=False)

    async def set_progress(self, value: Any) -> None:
        """Store ``value`` (a number or small JSON) on the job, for ``get_job()``: at most one
        Redis write per call, and calls closer than PROGRESS_INTERVAL_S apart are coalesced (the
        last value is written when the interval ends). Raises ``ProgressTooLargeError`` past
        MAX_PROGRESS_BYTES of JSON, ``TypeError``/``ValueError`` for a value that is not JSON."""
        if self._progress is not None:
            await self._progress(value)


@dataclass(frozen=True, slots=True)
class TagEvent:
    """What ``on_tag_bound`` and ``on_tag_released`` hooks receive."""

    queue: str
    identify_tag: str
    worker_id: str
    tag_state: dict[str, Any]
    """The binding's ``ctx.tag_state``: fill it on bind (a warmed cache), flush it on release."""
    reason: str = ""
    """Why the tag was released: batch_full, drained, retry_hold (a strict retry holds the tag),
    lease_expired, released_on_stop or worker_error; '' on bind."""


def _ms_to_datetime(ms: Any) -> datetime | None:
    if ms in (None, ""):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)
