"""QueueService: the producer side of one queue."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from pydantic import JsonValue, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import (
    InvalidTaskError,
    JobFailedError,
    LifecycleError,
    PayloadTooLargeError,
    QueueUnavailableError,
    UnknownJobError,
    never_sent,
)
from .keys import tag_id
from .lua import AddOptions, Scripts, new_token
from .models import (
    CancelOutcome,
    Job,
    JobStatus,
    LeaderInfo,
    PeriodicInfo,
    QueueStats,
    Task,
    WorkerState,
)
from .notify import Waiters
from .settings import MAX_ATTEMPTS_LIMIT, QueueSettings

TaskLike = Task | Mapping[str, Any]
T = TypeVar("T")

BULK_CHUNK = 250
BULK_CHUNK_BYTES = 1 << 20
"""A script call in ``add_bulk`` carries at most ``BULK_CHUNK`` tasks and, unless one task alone
is larger, ``BULK_CHUNK_BYTES`` of payload: enough to amortise the round trip, little enough that
one call holds Redis for a few milliseconds, not seconds."""

MAX_DURATION_S = 10 * 366 * 86_400
"""The longest delay (or ``run_at`` ahead), timeout, backoff and dedupe window ``add`` accepts:
ten years, far beyond any real use and far from where times in milliseconds overflow."""


JOB_ID = re.compile(r"^[0-9]+(-[0-9a-f]+)?$")
"""What job ids look like (``<order>-<token>``, see lua/add.lua): anything else names no job."""

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, ReadOnlyError, TryAgainError)
"""Errors a producer call is retried through: Redis unreachable, or a replica being promoted."""
_REFUSED = ("MISCONF", "BUSY")
"""Error replies (besides OOM) that mean Redis refused the call before it wrote anything."""


def dumps(value: Any) -> str:
    """The one JSON encoding used for payloads, results and errors."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class QueueService:
    """Adds tasks and reads jobs and statistics. Safe to share between coroutines."""

    def __init__(self, name: str, settings: QueueSettings, redis: Redis, scripts: Scripts) -> None:
        self.name = name
        self.settings = settings
        self._keys = settings.keys
        self._bind(redis, scripts)

    def _bind(self, redis: Redis, scripts: Scripts) -> None:
        """Use these clients from now on: a start after ``aclose()`` brings fresh ones."""
        self._redis = redis
        self._scripts = scripts
        self._closed = False
        self._waiters = Waiters(redis, self._keys.done_channel)

    async def aclose(self) -> None:
        """Called by ``AffinityQueue.aclose()``: later calls raise instead of reconnecting."""
        self._closed = True
        await self._waiters.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError(
                f"queue {self.name!r}: the AffinityQueue was closed; "
                "use the service only between start() and aclose() (or inside the lifespan)"
            )

    async def add(
        self,
        task: TaskLike,
        *,
        delay_s: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        backoff_ms: int | None = None,
        timeout_s: float | None = None,
        dedupe_key: str | None = None,
        dedupe_ttl_s: float = 300.0,
    ) -> Job:
        """Accept one task. Raises :class:`InvalidTaskError` (nothing written) on bad input.

        ``delay_s`` / ``run_at``: the task joins the end of its tag's order when due.
        ``dedupe_key``: while the key's window (``dedupe_ttl_s``) lasts, adding again returns the
        job the key first admitted and writes nothing, so a retried request adds once.
        """
        if dedupe_key is not None and not dedupe_key:
            raise InvalidTaskError("dedupe_key must be a non-empty string", field="dedupe_key")
        options = self._options(delay_s, run_at, max_attempts, backoff_ms, timeout_s)
        if dedupe_key:
            options = replace(
                options,
                dedupe_key=tag_id(dedupe_key),
                dedupe_ttl_ms=_positive_ms(dedupe_ttl_s, "dedupe_ttl_s"),
            )
        (job,) = await self._add([task], options)
        return job

    async def add_bulk(
        self,
        tasks: Iterable[TaskLike],
        *,
        delay_s: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        backoff_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> list[Job]:
        """Accept many tasks (the options apply to each), one round trip per chunk of
        ``BULK_CHUNK``.

        Every task is validated before anything is written. Each chunk is all-or-nothing; if Redis
        fails midway, the chunks before it are accepted and :class:`QueueUnavailableError` says so.
        """
        options = self._options(delay_s, run_at, max_attempts, backoff_ms, timeout_s)
        return await self._add(tasks, options)

    async def _add(self, tasks: Iterable[TaskLike], options: AddOptions) -> list[Job]:
        self._check_open()
        validated = [self._validate(t, i) for i, t in enumerate(tasks)]
        jobs: list[Job] = []
        for chunk in _chunks(validated):
            entries = [(t.type, t.identify_tag, tag_id(t.identify_tag), p) for t, p in chunk]
            added = await self._guard(partial(self._scripts.add, new_token(), entries, options))
            while added.deduplicated:
                existing = await self.get_job(added.ids[0])
                if existing is not None:
                    return [existing]
                # Its record expired between the two calls: the key no longer admits it.
                added = await self._guard(partial(self._scripts.add, new_token(), entries, options))
            created = datetime.fromtimestamp(added.now_ms / 1000, UTC)
            run_at = datetime.fromtimestamp(added.due_ms / 1000, UTC) if added.due_ms else None
            jobs.extend(
                Job.model_construct(
                    id=job_id,
                    type=t.type,
                    identify_tag=t.identify_tag,
                    payload=t.payload,
                    status=JobStatus.DELAYED if run_at else JobStatus.PENDING,
                    worker_id=None,
                    attempts=0,
                    max_attempts=options.max_attempts,
                    created_at=created,
                    run_at=run_at,
                    started_at=None,
                    finished_at=None,
                    result=None,
                    error=None,
                    history=[],
                )
                for job_id, (t, _) in zip(added.ids, chunk, strict=True)
            )
        return jobs

    def _options(
        self,
        delay_s: float | None,
        run_at: datetime | None,
        max_attempts: int | None,
        backoff_ms: int | None,
        timeout_s: float | None,
    ) -> AddOptions:
        s = self.settings
        if delay_s is not None and run_at is not None:
            raise InvalidTaskError("give delay_s or run_at, not both", field="run_at")
        if run_at is not None and run_at.tzinfo is None:
            raise InvalidTaskError("run_at must be timezone-aware", field="run_at")
        if max_attempts is not None and not (
            _is_int(max_attempts) and 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise InvalidTaskError(
                f"max_attempts must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}",
                field="max_attempts",
            )
        if backoff_ms is not None and not (
            _is_int(backoff_ms) and 0 <= backoff_ms <= MAX_DURATION_S * 1000
        ):
            raise InvalidTaskError(
                f"backoff_ms must be a whole number from 0 to {MAX_DURATION_S * 1000}",
                field="backoff_ms",
            )
        run_at_ms = 0
        if run_at is not None:
            ahead_s = (run_at - datetime.now(UTC)).total_seconds()
            if ahead_s > MAX_DURATION_S:
                raise InvalidTaskError(
                    f"run_at must be at most {MAX_DURATION_S} s (ten years) ahead", field="run_at"
                )
            run_at_ms = round(run_at.timestamp() * 1000)
        delay_ms = 0
        if delay_s is not None:
            # A delay of zero or less means "now".
            delay_ms = max(0, _duration_ms(delay_s, "delay_s", allow_zero=True))
        return AddOptions(
            max_attempts=max_attempts or s.max_attempts,
            backoff_ms=s.retry_backoff_ms if backoff_ms is None else backoff_ms,
            timeout_ms=_positive_ms(timeout_s, "timeout_s") if timeout_s is not None else 0,
            delay_ms=delay_ms,
            run_at_ms=run_at_ms,
            max_pending_per_tag=s.max_pending_per_tag,
        )

    async def wait_for(self, job_id: str, timeout_s: float | None = None) -> JsonValue:
        """The result of the job once it completed; raises :class:`JobFailedError` if it failed
        or was cancelled, ``TimeoutError`` after ``timeout_s``, :class:`UnknownJobError` for an
        unknown id. Woken by a notification from the script that finishes the job."""
        self._check_open()
        waiter = await self._guard(partial(self._waiters.register, job_id))
        try:
            # Without a timeout, the watch lasts as long as a completed record may (and the
            # waiter re-reads the record on wake-up, so nothing is lost if it outlives it).
            for_ms = self.settings.completed_ttl_ms if timeout_s is None else timeout_s * 1000
            status = await self._guard(partial(self._scripts.watch, job_id, round(for_ms) + 1000))
            if status is None:
                async with asyncio.timeout(timeout_s):
                    try:
                        await waiter
                    except _TRANSIENT as e:
                        raise QueueUnavailableError(self.name, e) from e
        finally:
            self._waiters.unregister(job_id, waiter)
        job = await self.get_job(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        if job.status is JobStatus.COMPLETED:
            return job.result
        raise JobFailedError(job)

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Withdraw a job that has not started; for a running one, set ``ctx.cancelled``."""
        self._check_open()
        if not JOB_ID.match(job_id):
            return CancelOutcome.UNKNOWN
        return CancelOutcome(await self._guard(partial(self._scripts.cancel, new_token(), job_id)))

    async def list_failed(self, offset: int = 0, limit: int = 100) -> list[Job]:
        """Dead letters, newest first: jobs that ran out of attempts or failed permanently."""
        self._check_open()
        if limit <= 0 or offset < 0:
            return []
        ids: list[str] = await self._guard(
            partial(self._redis.zrevrange, self._keys.failed, offset, offset + limit - 1)  # type: ignore[arg-type]
        )
        jobs = [await self.get_job(job_id) for job_id in ids]
        return [j for j in jobs if j is not None]

    async def requeue_failed(self, job_id: str) -> bool:
        """Put a dead letter back at the front of its tag, its attempts starting over."""
        self._check_open()
        return await self._guard(partial(self._scripts.requeue_failed, new_token(), job_id))

    async def delete_failed(self, job_id: str) -> bool:
        self._check_open()
        return await self._guard(partial(self._scripts.delete_failed, new_token(), job_id))

    async def pause(self) -> None:
        """Place nothing new (running and already assigned jobs go on) until :meth:`resume`."""
        self._check_open()
        await self._guard(partial(self._scripts.pause, new_token(), True))

    async def resume(self) -> None:
        self._check_open()
        await self._guard(partial(self._scripts.pause, new_token(), False))

    async def pause_tag(self, identify_tag: str) -> None:
        """Hold back one tag's pending tasks; other tags flow."""
        self._check_open()
        await self._guard(partial(self._scripts.pause, new_token(), True, tag_id(identify_tag)))

    async def resume_tag(self, identify_tag: str) -> None:
        self._check_open()
        await self._guard(partial(self._scripts.pause, new_token(), False, tag_id(identify_tag)))

    async def get_job(self, job_id: str) -> Job | None:
        self._check_open()
        if not JOB_ID.match(job_id):
            return None
        fields: dict[str, str] = await self._guard(
            partial(self._redis.hgetall, self._keys.job(job_id))  # type: ignore[arg-type]
        )
        return Job.from_redis(job_id, fields) if fields else None

    async def get_queue_stats(self) -> QueueStats:
        """Counts by status, every live worker's state and queue length, and the leader."""
        self._check_open()
        keys = self._keys

        async def overview() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.counts)
                pipe.zrange(keys.workers, 0, -1)
                pipe.hgetall(keys.leader)
                pipe.hgetall(keys.periodic_info)
                return await pipe.execute()

        async def per_worker_state() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for wid in worker_ids:
                    pipe.hgetall(keys.worker_state(wid))
                    pipe.llen(keys.worker_queue(wid))
                return await pipe.execute()

        counts, worker_ids, leader, periodic = await self._guard(overview)
        per_worker = await self._guard(per_worker_state) if worker_ids else []
        workers = [
            WorkerState.from_redis(wid, per_worker[2 * i], per_worker[2 * i + 1])
            for i, wid in enumerate(worker_ids)
        ]
        return QueueStats(
            queue=self.name,
            workers=workers,
            leader=LeaderInfo.from_redis(leader),
            periodic=[PeriodicInfo.from_redis(n, periodic[n]) for n in sorted(periodic)],
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
            size = len(payload.encode())
        except UnicodeEncodeError as e:
            raise InvalidTaskError(
                f"task #{index}: payload holds a string that is not valid Unicode "
                f"(a lone surrogate at position {e.start})",
                field="payload",
            ) from e
        except (TypeError, ValueError) as e:
            raise InvalidTaskError(
                f"task #{index}: payload is not JSON-serialisable: {e}", field="payload"
            ) from e
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(size, self.settings.max_payload_bytes, index)
        return valid, payload

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, retrying it through a short outage or a failover for up to
        REDIS_TIMEOUT; then :class:`QueueUnavailableError`. Calls that change state carry a
        request token, so a retry after a lost reply never applies them twice."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.redis_timeout_ms / 1000
        delay_s = 0.02
        sent = False  # whether any attempt may have reached Redis
        while True:
            try:
                return await call()
            except _TRANSIENT as e:
                sent = sent or not never_sent(e)
                if loop.time() + delay_s > give_up:
                    raise QueueUnavailableError(self.name, e, maybe_written=sent) from e
            except ResponseError as e:
                if isinstance(e, OutOfMemoryError) or str(e).split(" ", 1)[0] in _REFUSED:
                    raise QueueUnavailableError(self.name, e, maybe_written=False) from e
                raise
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)


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


def _positive_ms(seconds: float | None, field: str) -> int:
    return max(1, _duration_ms(seconds, field, allow_zero=False))


def _duration_ms(seconds: float | None, field: str, *, allow_zero: bool) -> int:
    """``seconds`` in milliseconds, if it is a finite number up to ``MAX_DURATION_S``."""
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds > MAX_DURATION_S
        or (seconds <= 0 and not allow_zero)
    ):
        what = "a finite number" if allow_zero else "a positive finite number"
        raise InvalidTaskError(
            f"{field} must be {what} of seconds, at most {MAX_DURATION_S}", field=field
        )
    return round(seconds * 1000)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
