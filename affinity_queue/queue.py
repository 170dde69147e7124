"""QueueService: the producer side of one queue."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import JsonValue, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .acl import acl_rule, denial
from .cluster import CLUSTER_REFUSED
from .errors import (
    AclDeniedError,
    InvalidTaskError,
    JobFailedError,
    LifecycleError,
    PayloadTooLargeError,
    QueueUnavailableError,
    UnknownJobError,
    never_sent,
)
from .keys import tag_from_id, tag_id
from .lua import AddOptions, Durability, Scripts, new_token
from .models import (
    ActivityBucket,
    CancelOutcome,
    FailedPage,
    Job,
    JobStatus,
    LeaderInfo,
    PeriodicInfo,
    QueueStats,
    TagInfo,
    Task,
    WorkerState,
    first_active,
)
from .notify import Waiters
from .settings import MAX_ATTEMPTS_LIMIT, QueueSettings, check_weight

if TYPE_CHECKING:
    from .observability import MetricsRecorder, TraceRecorder

TaskLike = Task | Mapping[str, Any]
T = TypeVar("T")

BULK_CHUNK = 100
BULK_CHUNK_BYTES = 256 << 10
"""A script call in ``add_bulk`` carries at most ``BULK_CHUNK`` tasks and, unless one task alone
is larger, ``BULK_CHUNK_BYTES`` of payload: enough to amortise the round trip, little enough that
one call holds Redis for a few milliseconds, not seconds."""

MAX_DURATION_S = 10 * 366 * 86_400
"""The longest delay (or ``run_at`` ahead), timeout, backoff and dedupe window ``add`` accepts:
ten years, far beyond any real use and far from where times in milliseconds overflow."""


JOB_ID = re.compile(r"^[0-9]+(-[0-9a-f]+)?$")
"""What job ids look like (``<order>-<token>``, see lua/add.lua): anything else names no job."""

_TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    *CLUSTER_REFUSED,
)
"""Errors a producer call is retried through: Redis unreachable, a replica being promoted, or a
cluster slot in migration."""
_REFUSED = ("MISCONF", "BUSY")
"""Error replies (besides OOM) that mean Redis refused the call before it wrote anything."""


dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""The one JSON encoding used for payloads, results and errors (one encoder, made once:
``json.dumps`` with options builds one per call)."""


class QueueService:
    """Adds tasks and reads jobs and statistics. Safe to share between coroutines."""

    def __init__(self, name: str, settings: QueueSettings, redis: Redis, scripts: Scripts) -> None:
        self.name = name
        self.settings = settings
        self._keys = settings.keys
        self._wait = (
            Durability(settings.redis_wait_replicas, settings.redis_wait_timeout_ms, self._keys.seq)
            if settings.redis_wait_replicas
            else None
        )
        self._bind(redis, scripts)
        self.metrics: MetricsRecorder | None = None
        self.tracer: TraceRecorder | None = None

    def _bind(self, redis: Redis, scripts: Scripts) -> None:
        """Use these clients from now on: a start after ``aclose()`` brings fresh ones."""
        self._redis = redis
        self._scripts = scripts
        self._closed = False
        self._waiters = Waiters(redis, self._keys.done_channel, self.name)

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
        weight: float | None = None,
    ) -> Job:
        """Accept one task. Raises :class:`InvalidTaskError` (nothing written) on bad input.
        The job returned is the record as added: with a worker idle, it may be running already.

        ``delay_s`` / ``run_at``: the task joins the end of its tag's order when due.
        ``dedupe_key``: while the key's window (``dedupe_ttl_s``) lasts, adding again returns the
        job the key first admitted and writes nothing, so a retried request adds once.
        ``weight``: the tag's fair-share weight while this task is the oldest one waiting in it
        (it wins over ``IDENTIFY_TAG_WEIGHT``; see the README's Fairness section).
        """
        if dedupe_key is not None and not dedupe_key:
            raise InvalidTaskError("dedupe_key must be a non-empty string", field="dedupe_key")
        options = self._options(delay_s, run_at, max_attempts, backoff_ms, timeout_s)
        options = self._weighted(options, weight, [task])
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
        weight: float | None = None,
    ) -> list[Job]:
        """Accept many tasks (the options apply to each), one round trip per chunk of
        ``BULK_CHUNK``.

        Every task is validated before anything is written. Each chunk is all-or-nothing; if Redis
        fails midway, the chunks before it are accepted and :class:`QueueUnavailableError` says so.
        """
        tasks = list(tasks)
        options = self._options(delay_s, run_at, max_attempts, backoff_ms, timeout_s)
        return await self._add(tasks, self._weighted(options, weight, tasks))

    async def _add(self, tasks: Iterable[TaskLike], options: AddOptions) -> list[Job]:
        self._check_open()
        validated = [self._validate(t, i) for i, t in enumerate(tasks)]
        if self.tracer is None:
            return await self._add_chunks(validated, options, None)
        async with self.tracer.producing(len(validated)) as span:
            carrier = dumps(span.carrier) if span.carrier else None
            jobs = await self._add_chunks(validated, options, carrier)
            span.added([job.id for job in jobs])
            return jobs

    async def _add_chunks(
        self, validated: list[tuple[Task, str]], options: AddOptions, carrier: str | None
    ) -> list[Job]:
        jobs: list[Job] = []
        for chunk in _chunks(validated):
            entries = [(t.type, t.identify_tag, tag_id(t.identify_tag), p) for t, p in chunk]
            token = new_token()
            if carrier is not None:
                # Before the add, under the token its jobs' ids carry: a worker that starts one
                # at once finds it. It lives as long as a dead letter could, plus any delay.
                ttl_ms = self.settings.failed_ttl_ms + options.delay_ms
                await self._guard(
                    partial(self._redis.set, self._keys.trace(token), carrier, px=ttl_ms)
                )
            add = partial(self._scripts.add, entries=entries, options=options, wait=self._wait)
            added = await self._guard(partial(add, token))
            while added.deduplicated:
                existing = await self.get_job(added.ids[0])
                if existing is not None:
                    return [existing]
                # Its record expired between the two calls: the key no longer admits it.
                added = await self._guard(partial(add, new_token()))
            created = datetime.fromtimestamp(added.now_ms / 1000, UTC)
            run_at = datetime.fromtimestamp(added.due_ms / 1000, UTC) if added.due_ms else None
            # The chunk's first job is built; the others are copies of it with their own fields
            # (model_copy costs about a third of model_construct per job).
            (first, _), first_id = chunk[0], added.ids[0]
            head = Job.model_construct(
                id=first_id,
                type=first.type,
                identify_tag=first.identify_tag,
                payload=first.payload,
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
            jobs.append(head)
            jobs.extend(
                head.model_copy(
                    update={
                        "id": job_id,
                        "type": t.type,
                        "identify_tag": t.identify_tag,
                        "payload": t.payload,
                        "history": [],  # a list of its own
                    }
                )
                for job_id, (t, _) in zip(added.ids[1:], chunk[1:], strict=True)
            )
            if self.metrics is not None and not added.deduplicated:
                for type_, n in Counter(t.type for t, _ in chunk).items():
                    self.metrics.enqueued(type_, n)
        return jobs

    @staticmethod
    def _weighted(options: AddOptions, weight: float | None, tasks: list[TaskLike]) -> AddOptions:
        if weight is None:
            return options
        try:
            return replace(options, weight=check_weight(weight, _tags_named(tasks)))
        except ValueError as e:
            raise InvalidTaskError(str(e), field="weight") from None

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
        return await self._newest(self._keys.failed, offset, limit)

    async def list_finished(self, offset: int = 0, limit: int = 100) -> list[Job]:
        """Completed and cancelled jobs still retained, newest first."""
        self._check_open()
        if limit <= 0 or offset < 0:
            return []
        return await self._newest(self._keys.completed, offset, limit)

    async def _newest(self, index: str, offset: int, limit: int) -> list[Job]:
        ids: list[str] = await self._guard(
            partial(self._redis.zrevrange, index, offset, offset + limit - 1)  # type: ignore[arg-type]
        )
        return await self.get_jobs(ids)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The records of ``job_ids`` that exist, in order, in one round trip."""
        self._check_open()
        ids = [i for i in job_ids if JOB_ID.match(i)]
        if not ids:
            return []

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self._keys.job(job_id))
                return await pipe.execute()

        records = await self._guard(read)
        return [Job.from_redis(i, h) for i, h in zip(ids, records, strict=True) if h]

    async def find_failed(
        self,
        *,
        type: str | None = None,
        identify_tag: str | None = None,
        error_type: str | None = None,
        cursor: int = 0,
        limit: int = 50,
        window: int = 2000,
    ) -> FailedPage:
        """Dead letters matching every filter given, newest first, from rank ``cursor`` on.

        Each filter has an index of its own (``failed-by:*``, kept by the scripts), so one
        filter reads just the page it shows; with several, the smallest index is read and its
        entries are checked for membership in the others (``ZSCORE``, no record read), at most
        ``window`` of them per call (then the page says where to go on). ``cursor`` is a rank
        in the index read, newest first."""
        self._check_open()
        keys, cursor = self._keys, max(0, cursor)
        wanted = {"type": type, "tag": identify_tag, "error": error_type}
        given = [keys.failed_by(f, v) for f, v in wanted.items() if v is not None]

        async def sizes() -> list[int]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in given:
                    pipe.zcard(key)
                return await pipe.execute()

        index, others = keys.failed, given
        if given:
            _, index = min(zip(await self._guard(sizes), given, strict=True))
            others = [key for key in given if key != index]

        async def read(start: int, n: int) -> tuple[int, list[str], list[Any]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(index)
                pipe.zrevrange(index, start, start + n - 1)
                total, ids = await pipe.execute()
                for job_id in ids:
                    for key in others:
                        pipe.zscore(key, job_id)
                return total, ids, await pipe.execute() if others and ids else []

        matched: list[str] = []
        examined, total = 0, 0
        while examined < window and len(matched) < limit:
            # Without other filters every entry matches: read just the page.
            n = min(limit - len(matched) if not others else max(limit, 100), window - examined)
            total, ids, scores = await self._guard(partial(read, cursor + examined, n))
            for i, job_id in enumerate(ids):
                examined += 1
                if all(x is not None for x in scores[i * len(others) : (i + 1) * len(others)]):
                    matched.append(job_id)
                    if len(matched) == limit:
                        break
            if len(ids) < n:
                break
        end = cursor + examined
        return FailedPage(
            jobs=await self.get_jobs(matched),
            next_cursor=end if end < total else None,
            examined=examined,
            total=total,
        )

    async def match_failed(
        self,
        *,
        type: str | None = None,
        identify_tag: str | None = None,
        error_type: str | None = None,
        limit: int = 1000,
    ) -> tuple[list[str], bool]:
        """Ids of up to ``limit`` dead letters matching the filters (for a bulk requeue or
        delete), and whether more may match."""
        ids: list[str] = []
        cursor: int | None = 0
        while cursor is not None and len(ids) < limit:
            page = await self.find_failed(
                type=type,
                identify_tag=identify_tag,
                error_type=error_type,
                cursor=cursor,
                limit=limit - len(ids),
            )
            ids += [j.id for j in page.jobs]
            cursor = page.next_cursor
        return ids, cursor is not None

    async def exists(self) -> bool:
        """Whether this queue has ever run against this Redis (its epoch or config is there)."""
        self._check_open()
        found: int = await self._guard(
            partial(self._redis.exists, self._keys.epoch, self._keys.config)
        )
        return found > 0

    async def list_delayed(self, offset: int = 0, limit: int = 100) -> list[Job]:
        """Jobs not yet due (delayed, or waiting for a relaxed retry), soonest first."""
        self._check_open()
        members: list[str] = await self._guard(
            partial(self._redis.zrange, self._keys.delayed, offset, offset + limit - 1)  # type: ignore[arg-type]
        )
        # A member is the id with its order number zero-padded, so that equal times sort by order.
        return await self.get_jobs([str(int(m[:15])) + m[15:] for m in members])

    async def list_tag_jobs(self, identify_tag: str, offset: int = 0, limit: int = 50) -> list[Job]:
        """A tag's pending jobs in the order they will run (its pending list)."""
        self._check_open()
        key = self._keys.tag_queue(identify_tag)
        ids: list[str] = await self._guard(
            partial(self._redis.lrange, key, offset, offset + limit - 1)  # type: ignore[arg-type]
        )
        return await self.get_jobs(ids)

    async def get_tags(self, identify_tags: Sequence[str]) -> list[TagInfo]:
        """Backlog, oldest job, bound workers, limit, pause and readiness of each tag, read in
        two round trips whatever the backlog."""
        self._check_open()
        keys = self._keys
        tids = [tag_id(t) for t in identify_tags]

        async def read() -> tuple[list[Any], list[Any]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.config, "concurrency")
                for tid in tids:
                    pipe.zscore(keys.backlog, tid)
                    pipe.llen(keys.tag_queue_id(tid))
                    pipe.lindex(keys.tag_queue_id(tid), 0)
                    pipe.zrange(keys.bound(tid), 0, -1, withscores=True)
                    pipe.hget(keys.limits, tid)
                    pipe.sismember(keys.paused_tags, tid)
                    pipe.zscore(keys.ready_bound, tid)
                    pipe.zscore(keys.ready_new, tid)
                first = await pipe.execute()
                for i in range(len(tids)):
                    head = first[1 + 8 * i + 2]
                    pipe.hget(keys.job(head or "none"), "created")
                return first, await pipe.execute()

        (default, *rows), created = await self._guard(read)
        default = default or self.settings.identify_tag_concurrency.default
        tags = []
        for i, tag in enumerate(identify_tags):
            waiting, n, head, bound, limit, paused, in_bound, in_new = rows[8 * i : 8 * i + 8]
            tags.append(
                TagInfo(
                    identify_tag=tag,
                    pending=n,
                    backlog=int(waiting or 0),
                    oldest_job_id=head,
                    oldest_created_at=_from_ms(created[i]),
                    bound_workers={w: int(b) for w, b in bound},
                    limit=int(limit or default),
                    paused=bool(paused),
                    ready="bound"
                    if in_bound is not None
                    else "new"
                    if in_new is not None
                    else None,
                )
            )
        return tags

    async def waiting_tags(self, limit: int = 20) -> list[str]:
        """Tags that can be placed now, the one whose head has waited longest first (what the
        scheduler takes next; a tag waiting for a full batch or paused is in neither set)."""
        self._check_open()
        keys = self._keys

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrange(keys.ready_bound, 0, limit - 1, withscores=True)
                pipe.zrange(keys.ready_new, 0, limit - 1, withscores=True)
                return await pipe.execute()

        bound, new = await self._guard(read)
        ranked = sorted([*bound, *new], key=lambda m: m[1])[:limit]
        return [tag_from_id(tid) for tid, _ in ranked]

    async def search_tags(self, prefix: str, limit: int = 50) -> tuple[list[str], bool]:
        """Tags starting with ``prefix`` (in byte order) that have work waiting, or that a
        worker holds, and whether that is all of them. Reads the tag index (``ZRANGEBYLEX``:
        a tag prefix is a hex prefix of its id) and the live workers' states, never a scan."""
        self._check_open()
        keys, hex_prefix = self._keys, tag_id(prefix)

        async def read() -> tuple[list[str], list[Any]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebylex(
                    keys.tag_names, f"[{hex_prefix}", f"({hex_prefix}g", start=0, num=limit + 1
                )
                pipe.zrange(keys.workers, 0, -1)
                named, workers = await pipe.execute()
                for wid in workers:
                    pipe.hget(keys.worker_state(wid), "tid")
                return named, await pipe.execute()

        named, held = await self._guard(read)
        found = dict.fromkeys(
            [*named[:limit], *sorted(t for t in held if t and t.startswith(hex_prefix))]
        )
        complete = len(named) <= limit and len(found) <= limit
        return [tag_from_id(t) for t in list(found)[:limit]], complete

    async def busiest_tags(self, limit: int = 20) -> list[tuple[str, int]]:
        """The tags with the most jobs waiting to start, most first, with that number: one
        read of the tag index whatever the number of tags."""
        self._check_open()
        if limit <= 0:
            return []
        ranked: list[tuple[str, float]] = await self._guard(
            partial(self._redis.zrevrange, self._keys.backlog, 0, limit - 1, withscores=True)  # type: ignore[arg-type]
        )
        return [(tag_from_id(tid), int(n)) for tid, n in ranked]

    async def count_tags(self) -> int:
        """How many tags have jobs waiting to start."""
        self._check_open()
        n: int = await self._guard(partial(self._redis.zcard, self._keys.backlog))
        return n

    async def list_tag_finished(self, identify_tag: str, limit: int = 20) -> list[Job]:
        """A tag's newest finished jobs still retained, newest first (at most 20 are kept)."""
        self._check_open()
        ids: list[str] = await self._guard(
            partial(self._redis.lrange, self._keys.tag_done(tag_id(identify_tag)), 0, limit - 1)  # type: ignore[arg-type]
        )
        return await self.get_jobs(ids)

    async def list_tag_assigned(self, identify_tag: str, limit: int = 50) -> list[Job]:
        """Jobs of a tag queued to the workers bound to it, in the order each will run them:
        the bound workers' queues, ``limit`` entries at most."""
        self._check_open()
        keys = self._keys

        async def read() -> list[str]:
            workers: list[str] = await self._redis.zrange(keys.bound(tag_id(identify_tag)), 0, -1)  # type: ignore[assignment]
            async with self._redis.pipeline(transaction=False) as pipe:
                for wid in workers:
                    pipe.lrange(keys.worker_queue(wid), 0, limit - 1)
                queued: list[list[str]] = await pipe.execute()
            return [i for ids in queued for i in ids][:limit]

        return await self.get_jobs(await self._guard(read))

    async def activity(self, minutes: int = 15, sample: int = 20) -> list[ActivityBucket]:
        """Jobs finished and failed per minute over the last ``minutes``, with the mean wait of
        up to ``sample`` of each minute's finished jobs: counts come from the retention indexes
        (``ZCOUNT``), so this costs the same whatever the backlog."""
        self._check_open()
        keys = self._keys

        async def read() -> tuple[int, list[Any], list[Any]]:
            seconds, micros = await self._redis.time()
            now = seconds * 1000 + micros // 1000
            start = now - now % 60_000 - (minutes - 1) * 60_000
            async with self._redis.pipeline(transaction=False) as pipe:
                for m in range(minutes):
                    lo, hi = start + m * 60_000, start + (m + 1) * 60_000 - 1
                    pipe.zcount(keys.completed, lo, hi)
                    pipe.zcount(keys.failed, lo, hi)
                    pipe.zrevrangebyscore(keys.completed, hi, lo, start=0, num=sample)
                counted = await pipe.execute()
                for m in range(minutes):
                    for job_id in counted[3 * m + 2]:
                        pipe.hmget(keys.job(job_id), "created", "started")
                return start, counted, await pipe.execute()

        start, counted, times = await self._guard(read)
        buckets, t = [], iter(times)
        for m in range(minutes):
            waits = [
                int(s) - int(c)
                for c, s in (next(t) for _ in counted[3 * m + 2])
                if c is not None and s is not None
            ]
            buckets.append(
                ActivityBucket(
                    start=datetime.fromtimestamp((start + m * 60_000) / 1000, UTC),
                    finished=counted[3 * m],
                    failed=counted[3 * m + 1],
                    wait_ms=sum(waits) / len(waits) if waits else None,
                )
            )
        return buckets

    async def get_config(self) -> dict[str, Any]:
        """The leader's scheduling settings as stored, the pause flag, and the sizes of the
        indexes: what the overview shows beside the counts."""
        self._check_open()
        keys = self._keys

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.config, "max_batch", "concurrency", "paused")
                for key in (keys.failed, keys.completed, keys.delayed, keys.ready_bound):
                    pipe.zcard(key)
                pipe.zcard(keys.ready_new)
                pipe.scard(keys.paused_tags)
                pipe.zrange(keys.workers, 0, -1, withscores=True)
                return await pipe.execute()

        (max_batch, concurrency, paused), *sizes, leases = await self._guard(read)
        concurrency = concurrency or self.settings.identify_tag_concurrency.default
        return {
            "max_batch_size": int(max_batch or self.settings.max_batch_size),
            "default_concurrency": int(
                concurrency or self.settings.identify_tag_concurrency.default
            ),
            "paused": paused == "1",
            "dead_letters": sizes[0],
            "retained_finished": sizes[1],
            "delayed": sizes[2],
            "ready_tags": sizes[3] + sizes[4],
            "paused_tags": sizes[5],
            "lease_expiry_ms": {w: int(score) for w, score in leases},
        }

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

        async def running() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in active:
                    pipe.hmget(keys.job(job_id), "started", "progress")
                return await pipe.execute()

        counts, worker_ids, leader, periodic = await self._guard(overview)
        per_worker = await self._guard(per_worker_state) if worker_ids else []
        # One field pair per running job (bounded by the workers, and progress by its size cap).
        active = [job for h in per_worker[0::2] if (job := first_active(h))]
        times = dict(zip(active, await self._guard(running), strict=True)) if active else {}
        workers = [
            WorkerState.from_redis(
                wid,
                per_worker[2 * i],
                per_worker[2 * i + 1],
                times.get(first_active(per_worker[2 * i]) or "", (None, None)),
            )
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
                if (denied := denial(e)) is not None:
                    raise AclDeniedError(self.name, denied, acl_rule(self.settings)) from e
                raise
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)


def _ready(in_bound: float | None, in_new: float | None) -> str | None:
    return "bound" if in_bound is not None else "new" if in_new is not None else None


def _from_ms(ms: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None


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


def _tags_named(tasks: list[TaskLike]) -> str:
    """``tag 'a'`` or ``tags 'a', 'b'``: the tags a per-call setting would apply to (the first
    three), for an error message."""
    tags: list[str] = []
    for t in tasks:
        tag = t.identify_tag if isinstance(t, Task) else t.get("identifyTag", t.get("identify_tag"))
        if isinstance(tag, str) and tag not in tags:
            tags.append(tag)
    if len(tags) <= 1:
        return f"tag {tags[0]!r}" if tags else "the tasks' tags"
    return "tags " + ", ".join(map(repr, tags[:3])) + (", ..." if len(tags) > 3 else "")
