"""WorkerService: handlers and the worker loops of one queue in this process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import secrets
import socket
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .aio import cancel_and_wait
from .errors import (
    ConfigMismatchError,
    DataLostError,
    JobNotActiveError,
    LeaseLostError,
    PermanentFailure,
    Retry,
)
from .lua import RawJob
from .models import JobContext
from .queue import dumps
from .retry import RedisTrouble
from .runtime import QueueRuntime

log = logging.getLogger("affinity_queue.worker")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

WAIT_CAP_S = 5.0
"""Longest single blocking wait: the client's socket timeout must exceed it."""
HAND_BACK_BUDGET = 500
"""Jobs one retire or deregister call hands back; a longer queue takes more calls."""


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[..., Any]
    is_async: bool
    wants_context: bool
    timeout_s: float | None

    @classmethod
    def of(cls, fn: Callable[..., Any], timeout_s: float | None) -> _Handler:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if not params:
            raise TypeError(f"handler {fn!r} must accept the payload as its first parameter")
        wants_context = len(params) >= 2 or params[0].kind is inspect.Parameter.VAR_POSITIONAL
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        return cls(fn, inspect.iscoroutinefunction(fn), wants_context, timeout_s)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What ``advance`` records for a finished run: completed, failed, or retry after a delay."""

    kind: str
    data: str
    retry_delay_ms: int = 0


def _error_json(
    attempt: int, exc: BaseException | None, *, type_: str = "", message: str = ""
) -> str:
    if exc is not None:
        type_, message = type(exc).__name__, str(exc)
    trace = "".join(traceback.format_exception(exc)) if exc is not None else ""
    return dumps({"type": type_, "message": message, "traceback": trace, "attempt": attempt})


_NOTHING = _Outcome("", "")
"""For an ``advance`` that finishes nothing and only takes the next job."""


def _new_worker_id(slot: int) -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}-{slot}"


class WorkerService(QueueRuntime):
    """Runs ``WORKER_COUNT`` logical workers; each runs its own jobs one at a time, in order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._handlers: dict[str, _Handler] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_ids: dict[int, str] = {}
        self._epoch = ""
        self._executor: ThreadPoolExecutor | None = None
        self._running: dict[str, JobContext] = {}
        self._lost: set[str] = set()  # worker ids whose lease the heartbeat found gone

    # -- handlers ---------------------------------------------------------------------------
    def register_handler(
        self, type: str, fn: Callable[..., Any], *, timeout_s: float | None = None
    ) -> None:
        """Run ``fn(payload)`` or ``fn(payload, context)`` for jobs of ``type``.

        Async handlers are awaited; sync ones run in a thread so they never block the loop.
        ``timeout_s`` bounds one run (a task's own ``timeout_s`` wins; TASK_TIMEOUT is the
        default): an async handler is cancelled, a sync one abandoned and its result ignored.
        """
        if not type:
            raise ValueError("handler type must be a non-empty string")
        self._handlers[type] = _Handler.of(fn, timeout_s)

    def handler(
        self, type: str, *, timeout_s: float | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: HandlerT) -> HandlerT:
            self.register_handler(type, fn, timeout_s=timeout_s)
            return fn

        return decorate

    @property
    def handler_types(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def worker_ids(self) -> list[str]:
        return list(self._worker_ids.values())

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._executor = self._new_executor()
        self._tasks = [
            asyncio.create_task(self._run_slot(slot), name=f"aq-worker-{self.name}-{slot}")
            for slot in range(self.settings.worker_count)
        ]
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"aq-hb-{self.name}"))

    async def stop(self) -> None:
        """Graceful: take nothing new, let running jobs finish within the grace period (then
        cancel them), hand every queued job back to the front of its tag, release the tags."""
        if not self._tasks:
            return
        self._stopping = True
        slots, heartbeat = self._tasks[:-1], self._tasks[-1]
        # Queued jobs go back to their tags now; idle workers get a token so their wait ends.
        for wid in list(self._worker_ids.values()):
            with contextlib.suppress(LeaseLostError, *RedisTrouble):
                await self._give_back(self._scripts.retire, wid)
        grace_s = self.settings.shutdown_grace_period_ms / 1000
        _, late = await asyncio.wait(slots, timeout=grace_s)
        await cancel_and_wait([*late, heartbeat])
        for wid in list(self._worker_ids.values()):
            # A lost lease means the leader already recovered it; with Redis gone, it expires.
            with contextlib.suppress(LeaseLostError, *RedisTrouble):
                await self._give_back(self._scripts.deregister, wid)
        self._worker_ids.clear()
        self._tasks = []
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    async def _give_back(
        script: Callable[[str, int], Awaitable[tuple[int, bool]]], wid: str
    ) -> None:
        """Run ``retire`` or ``deregister`` until it is done: each call hands back one slice."""
        while not (await script(wid, HAND_BACK_BUDGET))[1]:
            pass

    # -- the loops --------------------------------------------------------------------------
    async def _run_slot(self, slot: int) -> None:
        while not self._stopping:
            wid = ""
            try:
                wid = await self._register(slot)
                await self._work(wid)
                return
            except LeaseLostError:
                log.warning("worker %s lost its lease; re-registering under a new id", wid)
            except ConfigMismatchError as e:
                log.error("%s; this worker stops", e)
                return
            except Exception:
                # A bug must not leave a registered worker that heartbeats but never works:
                # hand its jobs back and start over under a new id.
                log.exception("worker %s failed; handing its jobs back", wid or f"slot {slot}")
                if wid:
                    with contextlib.suppress(Exception):
                        await self._give_back(self._scripts.deregister, wid)
                await asyncio.sleep(1)
            self._worker_ids.pop(slot, None)
            self._lost.discard(wid)

    async def _register(self, slot: int) -> str:
        """Register a fresh worker id; a changed epoch means Redis lost the queue's data."""
        wid = _new_worker_id(slot)
        register = partial(
            self._scripts.register,
            wid,
            self.settings.heartbeat_timeout_ms,
            socket.gethostname(),
            os.getpid(),
            secrets.token_hex(8),
        )
        epoch = await self._net.retry(register, what=f"worker {wid}: register")
        if self._epoch and epoch != self._epoch:
            log.error("%s", DataLostError(self.name))
        self._epoch = epoch
        self._worker_ids[slot] = wid
        return wid

    async def _work(self, wid: str) -> None:
        """Run jobs until stopping. Finishing one and taking the next is one ``advance`` call."""
        job = await self._advance(wid, None, _NOTHING)
        wake_key = self._keys.worker_wake(wid)
        wait_s = min(self.settings.heartbeat_interval_ms / 1000, WAIT_CAP_S)
        while True:
            if job is None:
                if self._stopping:
                    return
                woken = await self._net.retry(
                    lambda: self._blocking.blpop([wake_key], timeout=wait_s),
                    what=f"worker {wid}: wait",
                )
                if self._stopping:
                    return
                if wid in self._lost:  # the heartbeat found the lease gone
                    raise LeaseLostError(wid)
                if woken:  # bound by the scheduler (or nudged by the heartbeat)
                    job = await self._advance(wid, None, _NOTHING)
                continue
            outcome = await self._execute(wid, job)
            job = await self._advance(wid, job, outcome)

    async def _advance(self, wid: str, done: RawJob | None, outcome: _Outcome) -> RawJob | None:
        finished = done.id if done else ""
        take_next = not self._stopping
        order = self.settings.retry_order.value

        async def call() -> RawJob | None:
            nonlocal finished
            o = outcome
            try:
                return await self._scripts.advance(
                    wid, finished, o.kind, o.data, take_next, o.retry_delay_ms, order
                )
            except JobNotActiveError:
                # Only after a retry: the first attempt landed but its reply was lost. Asking
                # again without finishing returns the job that attempt started, if any.
                finished = ""
                return await self._scripts.advance(wid, finished, o.kind, o.data, take_next)

        return await self._net.retry(call, what=f"worker {wid}: advance")

    async def _execute(self, wid: str, job: RawJob) -> _Outcome:
        handler = self._handlers.get(job.type)
        if handler is None:
            return _Outcome(
                "failed",
                _error_json(
                    job.attempts,
                    None,
                    type_="UnknownTaskType",
                    message=f"no handler registered for type {job.type!r} in queue "
                    f"{self.name!r}; registered: {', '.join(self.handler_types) or 'none'}",
                ),
            )
        ctx = JobContext(
            job_id=job.id,
            identify_tag=job.identify_tag,
            worker_id=wid,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            queue=self.name,
        )
        args: tuple[Any, ...] = (json.loads(job.payload),)
        if handler.wants_context:
            args += (ctx,)
        timeout_s = (
            job.timeout_ms / 1000
            if job.timeout_ms
            else handler.timeout_s or (self.settings.task_timeout_ms / 1000 or None)
        )
        self._running[job.id] = ctx
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                if handler.is_async:
                    result = await handler.fn(*args)
                else:
                    loop = asyncio.get_running_loop()
                    # On timeout the thread is abandoned: its late result is ignored.
                    run = partial(handler.fn, *args)
                    result = await loop.run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            raise
        except PermanentFailure as exc:
            return _Outcome("failed", _error_json(job.attempts, exc))
        except Exception as exc:  # a handler's failure is the job's outcome, not the worker's
            if isinstance(exc, TimeoutError) and deadline.expired():
                exc = TimeoutError(f"the handler of {job.type!r} ran past {timeout_s} s")
                if not handler.is_async:
                    self._replace_executor()
            return self._failure(job, exc)
        finally:
            self._running.pop(job.id, None)
        try:
            return _Outcome("completed", dumps(result))
        except (TypeError, ValueError) as exc:
            return _Outcome(
                "failed",
                _error_json(
                    job.attempts,
                    None,
                    type_=type(exc).__name__,
                    message=f"the handler of {job.type!r} returned a result that is not "
                    f"JSON-serialisable: {exc}",
                ),
            )

    def _replace_executor(self) -> None:
        """An abandoned sync handler keeps its thread: later ones get a fresh pool, and the old
        one ends when its threads return."""
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False)

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.settings.worker_count, thread_name_prefix=f"aq-{self.name}"
        )

    def _failure(self, job: RawJob, exc: Exception) -> _Outcome:
        """A failed run: retried while attempts are left (after the handler's requested delay,
        or an exponential backoff with full jitter), else failed for good."""
        error = _error_json(job.attempts, exc)
        if job.attempts >= job.max_attempts:
            return _Outcome("failed", error)
        if isinstance(exc, Retry) and exc.delay_s is not None:
            delay_ms = max(0, round(exc.delay_s * 1000))
        else:
            ceiling = min(
                self.settings.retry_backoff_max_ms, job.backoff_ms * 2 ** (job.attempts - 1)
            )
            delay_ms = round(random.uniform(0, ceiling))
        return _Outcome("retry", error, delay_ms)

    async def _heartbeats(self) -> None:
        interval_s = self.settings.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            ids = list(self._worker_ids.values())
            if not ids:
                continue
            try:
                lost, cancel = await self._scripts.heartbeat(
                    self._epoch, self.settings.heartbeat_timeout_ms, ids
                )
            except DataLostError:
                lost, cancel = ids, []  # they re-register; the first to do so reports the loss
            except RedisTrouble:
                continue  # the worker loops report the outage
            except Exception:  # OOM, READONLY, BUSY...: the next beat may pass; never stop
                log.exception("queue %s: heartbeat failed", self.name)
                continue
            self._lost.update(lost)
            for ctx in self._running.values():
                # A job of a lost worker runs again elsewhere: let its handler know.
                if ctx.job_id in cancel or ctx.worker_id in self._lost:
                    ctx.cancelled = True
