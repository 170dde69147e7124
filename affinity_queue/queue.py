"""QueueService: the producer side of one queue."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import (
    InvalidTaskError,
    LifecycleError,
    PayloadTooLargeError,
    QueueUnavailableError,
)
from .keys import tag_id
from .lua import Scripts
from .models import Job, JobStatus, LeaderInfo, QueueStats, Task, WorkerState
from .settings import QueueSettings

TaskLike = Task | Mapping[str, Any]
T = TypeVar("T")

BULK_CHUNK = 1000
BULK_CHUNK_BYTES = 1 << 20
"""A script call in ``add_bulk`` carries at most ``BULK_CHUNK`` tasks and, unless one task alone
is larger, ``BULK_CHUNK_BYTES`` of payload: enough to amortise the round trip, little enough that
one call holds Redis for a few milliseconds, not seconds."""


def dumps(value: Any) -> str:
    """The one JSON encoding used for payloads, results and errors."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class QueueService:
    """Adds tasks and reads jobs and statistics. Safe to share between coroutines."""

    def __init__(self, name: str, settings: QueueSettings, redis: Redis, scripts: Scripts) -> None:
        self.name = name
        self.settings = settings
        self._redis = redis
        self._scripts = scripts
        self._keys = settings.keys
        self._closed = False

    def close(self) -> None:
        """Called by ``AffinityQueue.aclose()``: later calls raise instead of reconnecting."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError(
                f"queue {self.name!r}: the AffinityQueue was closed; "
                "use the service only between start() and aclose() (or inside the lifespan)"
            )

    async def add(self, task: TaskLike) -> Job:
        """Accept one task. Raises :class:`InvalidTaskError` (nothing written) on bad input."""
        (job,) = await self.add_bulk([task])
        return job

    async def add_bulk(self, tasks: Iterable[TaskLike]) -> list[Job]:
        """Accept many tasks, one round trip per chunk of ``BULK_CHUNK``.

        Every task is validated before anything is written. Each chunk is all-or-nothing; if Redis
        fails midway, the chunks before it are accepted and :class:`QueueUnavailableError` says so.
        """
        self._check_open()
        validated = [self._validate(t, i) for i, t in enumerate(tasks)]
        jobs: list[Job] = []
        for chunk in _chunks(validated):
            entries = [(t.type, t.identify_tag, tag_id(t.identify_tag), p) for t, p in chunk]
            first, now_ms = await self._guard(self._scripts.add(entries))
            created = datetime.fromtimestamp(now_ms / 1000, UTC)
            jobs.extend(
                Job(
                    id=str(first + i),
                    type=t.type,
                    identify_tag=t.identify_tag,
                    payload=t.payload,
                    status=JobStatus.PENDING,
                    created_at=created,
                )
                for i, (t, _) in enumerate(chunk)
            )
        return jobs

    async def get_job(self, job_id: str) -> Job | None:
        self._check_open()
        if not job_id.isdigit():
            return None
        fields: dict[str, str] = await self._guard(
            self._redis.hgetall(self._keys.job(job_id))  # type: ignore[arg-type]
        )
        return Job.from_redis(job_id, fields) if fields else None

    async def get_queue_stats(self) -> QueueStats:
        """Counts by status, every live worker's state and queue length, and the leader."""
        self._check_open()
        keys = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.counts)
            pipe.zrange(keys.workers, 0, -1)
            pipe.hgetall(keys.leader)
            counts, worker_ids, leader = await self._guard(pipe.execute())
        async with self._redis.pipeline(transaction=False) as pipe:
            for wid in worker_ids:
                pipe.hgetall(keys.worker_state(wid))
                pipe.llen(keys.worker_queue(wid))
            per_worker = await self._guard(pipe.execute()) if worker_ids else []
        workers = [
            WorkerState.from_redis(wid, per_worker[2 * i], per_worker[2 * i + 1])
            for i, wid in enumerate(worker_ids)
        ]
        return QueueStats(
            queue=self.name,
            workers=workers,
            leader=LeaderInfo.from_redis(leader),
            **{s: max(0, int(counts.get(s, 0))) for s in JobStatus},
        )

    def _validate(self, task: TaskLike, index: int) -> tuple[Task, str]:
        try:
            valid = task if isinstance(task, Task) else Task.model_validate(task)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "task"
            raise InvalidTaskError(f"task #{index}: {field}: {first['msg']}", field=field) from e
        try:
            payload = dumps(valid.payload)
        except (TypeError, ValueError) as e:
            raise InvalidTaskError(
                f"task #{index}: payload is not JSON-serialisable: {e}", field="payload"
            ) from e
        size = len(payload.encode())
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(size, self.settings.max_payload_bytes, index)
        return valid, payload

    async def _guard(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise QueueUnavailableError(self.name, e) from e


def _chunks(tasks: list[tuple[Task, str]]) -> Iterator[list[tuple[Task, str]]]:
    chunk: list[tuple[Task, str]] = []
    size = 0
    for task, payload in tasks:
        if chunk and (len(chunk) == BULK_CHUNK or size + len(payload) > BULK_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((task, payload))
        size += len(payload)
    if chunk:
        yield chunk
