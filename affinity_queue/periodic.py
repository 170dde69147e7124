"""Periodic tasks: schedules declared in code, enqueued by the elected leader, once per tick.

A schedule is a cron expression (5 fields, or 6 with seconds first; in a time zone) or an
interval (ticks at whole multiples of ``every_s`` since the epoch, so every process agrees on
them). Its tick is the scheduled time, which names the task: the leader adds it with the
deduplication key ``periodic:<name>:<tick ms>``, whose window outlasts every moment at which
any leader could still consider the tick, then records the tick (``ZADD GT``, so the record only
grows). A leader that dies between the two is followed by one that finds the tick unrecorded and
adds it again: the key answers with the first job. So each tick is enqueued once across any
number of processes and failovers, without a script of its own.

Late ticks: a tick enqueued within ``misfire_grace_s`` of its time is on time (a failover always
is: the default grace is twice ``ELECTION_LOCK_TTL + HEARTBEAT_INTERVAL``), and each on-time tick
runs. Older ticks were missed (no leader for longer: everything was down): ``missed="once"``
(the default) enqueues the newest missed tick once, ``missed="skip"`` drops them. A schedule the
leader sees for the first time starts from then: no earlier tick runs.

cronsim parses the expressions (the ``periodic`` extra); it is imported here only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis.asyncio import Redis

from .errors import InvalidScheduleError, InvalidTaskError, TagBacklogFullError
from .keys import QueueKeys, tag_id
from .lua import AddOptions, Scripts, new_token
from .models import Task
from .observability.logs import queue_log
from .settings import QueueSettings

if TYPE_CHECKING:
    from cronsim import CronSim

log = logging.getLogger("affinity_queue.periodic")
T = TypeVar("T")

TICKS_PER_STEP = 100
"""Most ticks one leader step enqueues (a catch-up after a failover takes several steps), so
the dispatch loop is never held back for long."""
DEDUPE_MARGIN_MS = 60_000
"""Added to a tick's deduplication window, for clock differences between the processes."""
MIN_EVERY_S = 1.0
"""The shortest interval (and cron's seconds field is the finest resolution)."""
_MAX_WINDOW_MS = 10 * 366 * 86_400_000
"""The longest deduplication window ``add`` accepts (ten years, as ``queue.MAX_DURATION_S``)."""


class Missed(StrEnum):
    """What the leader does with ticks older than the schedule's grace (everything was down)."""

    ONCE = "once"
    """Enqueue the newest missed tick once (as Celery beat and systemd's ``Persistent=``)."""
    SKIP = "skip"
    """Drop missed ticks; the next on-time tick runs (as arq's and SAQ's cron)."""


def _cronsim() -> type[CronSim]:
    try:
        from cronsim import CronSim
    except ImportError as e:
        raise ImportError(
            "cron schedules need the 'periodic' extra: pip install 'affinity-queue[periodic]' "
            "(interval schedules, every_s=..., need nothing)"
        ) from e
    return CronSim


@dataclass(frozen=True, slots=True)
class Schedule:
    """One declared periodic task. Build it with :func:`schedule`, which validates it."""

    name: str
    task: Task
    payload_json: str
    cron: str | None
    every_ms: int | None
    tz: ZoneInfo
    missed: Missed
    grace_ms: int

    @property
    def spec(self) -> str:
        if self.cron is not None:
            return f"{self.cron} ({self.tz.key})"
        assert self.every_ms is not None
        return f"every {self.every_ms / 1000:g} s"

    def after(self, t_ms: int) -> int:
        """The first tick strictly after ``t_ms`` (ms since the epoch)."""
        if self.every_ms is not None:
            return (t_ms // self.every_ms + 1) * self.every_ms
        return _ms(next(_cronsim()(self.cron or "", self._local(t_ms))))

    def at_or_before(self, t_ms: int) -> int:
        """The newest tick at or before ``t_ms``."""
        if self.every_ms is not None:
            return t_ms // self.every_ms * self.every_ms
        # Reversed, cronsim yields times strictly before a whole second but takes a time with a
        # fraction down to its second first; ticks are whole seconds, so this is "at or before".
        start = self._local(t_ms) + timedelta(microseconds=1)
        return _ms(next(_cronsim()(self.cron or "", start, reverse=True)))

    def _local(self, t_ms: int) -> datetime:
        return datetime.fromtimestamp(t_ms / 1000, UTC).astimezone(self.tz)


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def schedule(
    name: str,
    task: Task,
    payload_json: str,
    settings: QueueSettings,
    *,
    cron: str | None,
    every_s: float | None,
    tz: str,
    missed: Missed | str,
    misfire_grace_s: float | None,
) -> Schedule:
    """A validated :class:`Schedule`; :class:`InvalidScheduleError` names what is wrong."""

    def bad(problem: str) -> InvalidScheduleError:
        return InvalidScheduleError(name, problem)

    if (cron is None) == (every_s is None):
        raise bad("give a cron expression or every_s, exactly one of them")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        hint = "use an IANA name such as 'Europe/Riga' or 'UTC'"
        raise bad(f"unknown time zone {tz!r} ({hint})") from None
    try:
        missed = Missed(missed)
    except ValueError:
        raise bad(f"missed must be one of {', '.join(m.value for m in Missed)}") from None
    every_ms = None
    if every_s is not None:
        if not _finite(every_s) or not MIN_EVERY_S <= every_s <= _MAX_WINDOW_MS / 1000:
            raise bad(f"every_s must be a number of seconds from {MIN_EVERY_S:g} to ten years")
        every_ms = round(every_s * 1000)
    if cron is not None:
        cron_sim = _cronsim()
        from cronsim import CronSimError

        fields = len(cron.split())
        if fields not in (5, 6):
            raise bad(
                f"cron expression {cron!r} has {fields} fields; give 5 (minute hour day month "
                "weekday) or 6 (a seconds field first)"
            )
        try:
            next(cron_sim(cron, datetime.now(zone)))
        except (CronSimError, StopIteration) as e:
            raise bad(f"cron expression {cron!r} does not parse: {e or 'it never fires'}") from e
    if misfire_grace_s is None:
        grace_ms = 2 * (settings.election_lock_ttl_ms + settings.heartbeat_interval_ms)
    elif _finite(misfire_grace_s) and 0 <= misfire_grace_s <= _MAX_WINDOW_MS / 1000:
        grace_ms = round(misfire_grace_s * 1000)
    else:
        raise bad("misfire_grace_s must be a number of seconds from 0 to ten years")
    return Schedule(name, task, payload_json, cron, every_ms, zone, missed, grace_ms)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class LeaderCall(Protocol):
    """The scheduler's way to call Redis: retried through faults, stopped when the term ends."""

    def __call__(self, call: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]: ...


class Periodic:
    """The periodic tasks of one queue, and the leader's step that enqueues their due ticks."""

    def __init__(self, queue: str, settings: QueueSettings) -> None:
        self.queue = queue
        self._log = queue_log(log, queue)
        self.settings = settings
        self._keys: QueueKeys = settings.keys
        self._schedules: dict[str, Schedule] = {}
        self._last: dict[str, int] = {}
        self._loaded_fence = 0  # the term whose view of the records ``_last`` is

    @property
    def schedules(self) -> list[Schedule]:
        return list(self._schedules.values())

    def declare(self, s: Schedule) -> None:
        if s.name in self._schedules:
            raise InvalidScheduleError(
                s.name, f"queue {self.queue!r} already has a periodic task of that name"
            )
        self._schedules[s.name] = s

    async def step(self, fence: int, redis: Redis, scripts: Scripts, call: LeaderCall) -> float:
        """Enqueue the due ticks (at most ``TICKS_PER_STEP``); return the seconds until the next
        one is due (0: more are due now, ``inf``: no schedules)."""
        if not self._schedules:
            return math.inf
        if fence != self._loaded_fence:
            # A new term: another leader may have recorded ticks since we last led.
            await call(lambda: self._load(redis), "periodic")
            self._loaded_fence = fence
        now = _now_ms()
        budget = TICKS_PER_STEP
        for s in self._schedules.values():
            if (skip_to := self._skipped(s, now)) is not None:
                await call(partial(self._record, redis, s, skip_to, None), "periodic record")
            for tick in self._due(s, now):
                if budget == 0:
                    return 0.0
                budget -= 1
                await self._enqueue(s, tick, now, redis, scripts, call)
        wait_ms = min(s.after(self._last[s.name]) for s in self.schedules) - _now_ms()
        # Under 2 ms counts as now: a blocking wait of under 1 ms would be one without end.
        return wait_ms / 1000 if wait_ms >= 2 else 0.0

    def _skipped(self, s: Schedule, now: int) -> int | None:
        """With ``missed="skip"``, the newest missed tick, to be recorded without a task."""
        late = now - s.grace_ms  # ticks before this were missed
        if s.missed is not Missed.SKIP or s.after(self._last[s.name]) >= late:
            return None
        newest_missed = s.at_or_before(late - 1)
        self._log.warning(
            "queue %s: periodic task %r skips its missed ticks up to %s (missed=skip)",
            self.queue,
            s.name,
            _iso(newest_missed),
        )
        return newest_missed

    def _due(self, s: Schedule, now: int) -> list[int]:
        """The ticks to enqueue, oldest first: the newest missed one (``missed="once"``), then
        every on-time one."""
        last = self._last[s.name]
        late = now - s.grace_ms
        due = [s.at_or_before(late - 1)] if s.after(last) < late else []
        t = s.after(max(last, late - 1))
        while t <= now and len(due) < TICKS_PER_STEP:
            due.append(t)
            t = s.after(t)
        return due

    async def _enqueue(
        self, s: Schedule, tick: int, now: int, redis: Redis, scripts: Scripts, call: LeaderCall
    ) -> None:
        st = self.settings
        options = AddOptions(
            max_attempts=st.max_attempts,
            backoff_ms=st.retry_backoff_ms,
            max_pending_per_tag=st.max_pending_per_tag,
            dedupe_key=tag_id(f"periodic:{s.name}:{tick}"),
            # The tick stays a candidate until the next one is past the grace (then it is neither
            # on time nor the newest missed): the window covers that, whoever leads by then.
            dedupe_ttl_ms=min(_MAX_WINDOW_MS, s.after(tick) + s.grace_ms - now + DEDUPE_MARGIN_MS),
        )
        t = s.task
        entry = (t.type, t.identify_tag, tag_id(t.identify_tag), s.payload_json)
        token = new_token()  # one per tick: a retry after a lost reply replays the first reply
        job_id: str | None = None
        try:
            added = await call(lambda: scripts.add(token, [entry], options), "periodic add")
            job_id = added.ids[0]
        except TagBacklogFullError as e:
            self._log.warning("queue %s: periodic task %r skips tick %s: %s", self.queue, s.name,
                        _iso(tick), e)  # fmt: skip
        await call(lambda: self._record(redis, s, tick, job_id), "periodic record")

    async def _load(self, redis: Redis) -> None:
        """Read every schedule's last tick; a new schedule starts now; forget removed ones."""
        k, now = self._keys, _now_ms()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(k.periodic_ticks, dict.fromkeys(self._schedules, now), nx=True)
            pipe.zrange(k.periodic_ticks, 0, -1, withscores=True)
            pipe.hkeys(k.periodic_info)
            _, recorded, described = await pipe.execute()
        self._last = {name: int(score) for name, score in recorded if name in self._schedules}
        gone = {name for name, _ in recorded} | set(described)
        gone -= set(self._schedules)
        async with redis.pipeline(transaction=False) as pipe:
            if gone:
                pipe.zrem(k.periodic_ticks, *gone)
                pipe.hdel(k.periodic_info, *gone)
            for s in self.schedules:
                pipe.hsetnx(k.periodic_info, s.name, self._info(s, None, None))
            await pipe.execute()

    async def _record(self, redis: Redis, s: Schedule, tick: int, job_id: str | None) -> None:
        k = self._keys
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(k.periodic_ticks, {s.name: tick}, gt=True)
            pipe.zscore(k.periodic_ticks, s.name)
            pipe.hget(k.periodic_info, s.name)
            _, newest, info = await pipe.execute()
        self._last[s.name] = int(newest)
        earlier = json.loads(info) if info else {}
        last, job = (tick, job_id) if job_id else (earlier.get("last"), earlier.get("job"))
        await redis.hset(k.periodic_info, s.name, self._info(s, last, job))

    def _info(self, s: Schedule, last: int | None, job_id: str | None) -> str:
        return json.dumps(
            {
                "type": s.task.type,
                "tag": s.task.identify_tag,
                "schedule": s.spec,
                "next": s.after(self._last.get(s.name, _now_ms())),
                "last": last,
                "job": job_id,
            }
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat()


def check_task(
    name: str, validate: Callable[[Any, int], tuple[Task, str]], task: Any
) -> tuple[Task, str]:
    """``validate(task, 0)`` (the producer's own check, so a periodic task can never be refused
    later), its :class:`InvalidTaskError` turned into one that names the schedule."""
    try:
        return validate(task, 0)
    except InvalidTaskError as e:
        raise InvalidScheduleError(name, f"its task is invalid: {e}") from e
