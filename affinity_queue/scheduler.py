"""Scheduler: leader election, event-driven dispatch and maintenance for one queue.

Every SCHEDULER/BOTH process runs one; exactly one leads at a time. Leadership is a lease
(``elect``/``renew``/``resign`` scripts). Each term has a fencing number that the shared-state
scripts (``dispatch``, ``reap``) check, so a paused or partitioned ex-leader changes nothing. The
leader also stops by its own monotonic clock before its lease could have expired.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from .aio import cancel_and_wait, supervise
from .errors import ConfigMismatchError, NotLeaderError
from .keys import tag_id
from .lua import TermConfig
from .observability.logs import named_ids, queue_log
from .periodic import Periodic
from .retry import RedisTrouble
from .runtime import QueueRuntime
from .settings import QueueSettings
from .worker import WAIT_CAP_S

if TYPE_CHECKING:
    from .observability import MetricsRecorder

log = logging.getLogger("affinity_queue.scheduler")
T = TypeVar("T")

DISPATCH_BUDGET = 100
"""Jobs placed per dispatch call: bounds how long one script holds Redis."""
REAP_BUDGET = 200
"""Jobs handed back per reap call; more dead workers take more calls, between placements."""
LEASE_SAFETY = 0.8
"""A leader acts only within this fraction of its lease, measured from when it asked to renew."""


class Scheduler(QueueRuntime):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._log = queue_log(log, self.name)
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._token = secrets.token_hex(16)
        self._fence = 0
        self._valid_until = 0.0  # monotonic deadline of the current term
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.metrics: MetricsRecorder | None = None
        self.periodic = Periodic(self.name, self.settings)

    @property
    def is_leader(self) -> bool:
        return self._fence != 0 and time.monotonic() < self._valid_until

    @property
    def fence(self) -> int:
        return self._fence

    async def start(self) -> None:
        self._stopping = False
        self._task = supervise(
            self._run,
            name=f"aq-scheduler-{self.name}",
            what=f"queue {self.name}: scheduler",
            running=self._runs,
            logger=self._log,
        )

    def _runs(self) -> bool:
        return not self._stopping

    async def stop(self) -> None:
        """Stop scheduling; a leader resigns so a standby takes over at once."""
        self._stopping = True
        try:
            if self._task:
                await cancel_and_wait([self._task], logger=self._log)
                self._task = None
            # Not `if self._fence`: cancelling the term's task already reset it to 0. Resigning
            # is compare-and-delete on our token: it does nothing when this node does not lead.
            with suppress(*RedisTrouble):
                await self._scripts.resign(self._token)
        finally:
            self._fence = 0

    # -- election ---------------------------------------------------------------------------
    async def _run(self) -> None:
        """Elect, lead, repeat; supervised, so an error that escapes a term restarts it."""
        s = self.settings
        standby_wait_s = min(s.heartbeat_interval_ms / 1000, WAIT_CAP_S)
        while not self._stopping:
            asked_at = time.monotonic()
            try:
                fence = await self._net.retry(
                    lambda: self._scripts.elect(
                        self._token,
                        s.election_lock_ttl_ms,
                        self.node_id,
                        socket.gethostname(),
                        os.getpid(),
                        _term_config(s),
                    ),
                    what="election",
                )
            except ConfigMismatchError as e:
                self._log.error("%s; this scheduler stops", e)
                self._stopping = True  # for good: its supervisor must not restart it
                return
            if not fence:
                await self._net.retry(
                    lambda: self._blocking.blpop([self._keys.election], timeout=standby_wait_s),
                    what="standby",
                )
                continue
            self._fence = fence
            self._valid_until = asked_at + s.election_lock_ttl_ms / 1000 * LEASE_SAFETY
            self._log.info(
                "queue %s: node %s leads (fence %d)",
                self.name,
                self.node_id,
                fence,
                extra={"queue": self.name},
            )
            if self.metrics is not None:
                self.metrics.term_began()
            try:
                await self._lead()
            except NotLeaderError:
                if self.metrics is not None:
                    self.metrics.fenced()
                self._log.warning(
                    "queue %s: node %s lost the leadership",
                    self.name,
                    self.node_id,
                    extra={"queue": self.name},
                )
            except Exception:
                # Resign so a standby takes over at once; the supervisor logs and restarts us.
                with suppress(Exception):
                    await self._scripts.resign(self._token)
                raise
            finally:
                self._fence = 0

    async def _lead(self) -> None:
        renewing = supervise(
            self._renew_loop,
            name=f"aq-renew-{self.name}",
            what=f"queue {self.name}: leader lease renewal",
            running=lambda: self.is_leader and not self._stopping,
            logger=self._log,
        )
        try:
            await self._dispatch_loop()
        finally:
            await cancel_and_wait([renewing], logger=self._log)

    async def _renew_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.heartbeat_interval_ms / 1000)
            asked_at = time.monotonic()  # an attempt that renews is sent no earlier than this
            renew = partial(self._scripts.renew, self._token, s.election_lock_ttl_ms)
            try:
                renewed = await self._net.retry(renew, what="renew", check=self._check_term)
            except NotLeaderError:
                return  # the monotonic deadline ended the term while Redis failed
            if not renewed:
                self._valid_until = 0.0
                return
            self._valid_until = asked_at + s.election_lock_ttl_ms / 1000 * LEASE_SAFETY

    def _check_term(self) -> None:
        if not self.is_leader:
            raise NotLeaderError()

    # -- dispatch and maintenance -----------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        s = self.settings
        interval_s = min(s.scheduler_interval_ms / 1000, WAIT_CAP_S)
        reap_every_s = s.heartbeat_interval_ms / 1000
        next_reap = 0.0  # a new term first recovers what the last one left
        while not self._stopping:
            # Maintenance first (under a backlog that never ends, dispatch always has more), one
            # bounded call per round, so it never holds placement back for long.
            now = time.monotonic()
            if now >= next_reap:
                more_dead = await self._reap()
                next_reap = now if more_dead else now + reap_every_s
            tick_in_s = await self._periodic()
            _, more, next_due_ms = await self._leader_call(
                lambda: self._scripts.dispatch(self._fence, DISPATCH_BUDGET), "dispatch"
            )
            if more or next_due_ms == 0 or tick_in_s == 0:
                continue
            wait_s = interval_s if next_due_ms < 0 else min(interval_s, next_due_ms / 1000)
            wait_s = min(wait_s, tick_in_s)
            wait = partial(self._blocking.blpop, [self._keys.wake], timeout=wait_s)
            await self._leader_call(wait, "wait")

    async def _periodic(self) -> float:
        """Enqueue the periodic tasks that are due (periodic.py); the seconds until the next."""
        return await self.periodic.step(self._fence, self._redis, self._scripts, self._leader_call)

    async def _reap(self) -> bool:
        """Hand back the jobs of workers whose lease expired, found through the lease index
        (every per-worker key is written only while its lease is valid, so nothing needs a
        keyspace scan). Returns whether expired workers are left for the next round."""
        reap = partial(self._scripts.reap, self._fence, REAP_BUDGET)
        workers, jobs, more, ids = await self._leader_call(reap, "reap")
        if workers and self.metrics is not None:
            self.metrics.recovered(workers)
        if workers or jobs:
            self._log.warning(
                "queue %s: recovered %d dead worker(s), %d job(s) back to their tags%s",
                self.name,
                workers,
                jobs,
                f": {named_ids(ids, jobs)}" if jobs else "",
                extra={"job_ids": ids},
            )
        return more

    async def _leader_call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry through Redis outages, but give up once the term may have expired."""
        return await self._net.retry(call, what=what, check=self._check_term)


def _term_config(s: QueueSettings) -> TermConfig:
    return TermConfig(
        max_batch=s.max_batch_size,
        concurrency=s.identify_tag_concurrency.default,
        keep_completed=s.keep_completed,
        completed_ttl_ms=s.completed_ttl_ms,
        keep_failed=s.keep_failed,
        failed_ttl_ms=s.failed_ttl_ms,
        limits=_by_tag_id(s.identify_tag_concurrency.limits),
        weight=s.identify_tag_weight.default,
        rate=s.identify_tag_rate.default or 0.0,
        weights=_by_tag_id(s.identify_tag_weight.weights),
        rates=_by_tag_id(s.identify_tag_rate.rates),
    )


def _by_tag_id(per_tag: dict[str, T]) -> dict[str, T]:
    return {tag_id(tag): value for tag, value in per_tag.items()}
