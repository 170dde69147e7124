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
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .aio import cancel_and_wait, supervise
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
HANDLER_STOP_S = 1.0
"""How long stop() waits, after the grace period, for cancelled async handlers to end."""


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


@dataclass(frozen=True, slots=True)
class _Run:
    """A handler run of one worker: ``done`` resolves when the handler's code has returned
    (not when we stop waiting for it), so the worker and its tag are held until then."""

    ctx: JobContext
    type: str
    done: asyncio.Future[Any]


def _in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run ``fn`` in a daemon thread of its own; the future resolves when it has returned.

    Not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so a handler that
    never returns would keep a stopped process alive; a daemon thread dies with the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        result = None
        try:
            result = fn()
        except Exception as e:
            error = e
        except BaseException as e:  # SystemExit in a handler must not take the worker down
            error = RuntimeError(f"the handler raised {e!r}")
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


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
        self._slots: dict[int, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._worker_ids: dict[int, str] = {}
        self._busy: set[int] = set()  # slots holding a job, from taking it to recording it
        self._epoch = ""
        self._running: dict[str, _Run] = {}  # by worker id: handlers whose code still runs
        self._lost: set[str] = set()  # worker ids whose lease the heartbeat found gone

    # -- handlers ---------------------------------------------------------------------------
    def register_handler(
        self, type: str, fn: Callable[..., Any], *, timeout_s: float | None = None
    ) -> None:
        """Run ``fn(payload)`` or ``fn(payload, context)`` for jobs of ``type``.

        Async handlers are awaited; sync ones run in a daemon thread so they never block the
        loop. ``timeout_s`` bounds one run (a task's own ``timeout_s`` wins; TASK_TIMEOUT is the
        default): the attempt fails with ``TimeoutError``, ``ctx.cancelled`` is set and an async
        handler is cancelled; the worker keeps the tag until the handler has really returned
        (a sync one cannot be interrupted), and ignores what it returns.
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
        self._slots = {
            slot: supervise(
                partial(self._run_slot, slot),
                name=f"aq-worker-{self.name}-{slot}",
                what=f"queue {self.name}: worker slot {slot}",
                running=self._runs,
            )
            for slot in range(self.settings.worker_count)
        }
        self._heartbeat = supervise(
            self._heartbeats,
            name=f"aq-hb-{self.name}",
            what=f"queue {self.name}: heartbeats",
            running=self._runs,
        )

    def _runs(self) -> bool:
        return not self._stopping

    def begin_stop(self) -> None:
        """Take no new task from now on; :meth:`stop` does the rest."""
        self._stopping = True

    async def stop(self) -> None:
        """Graceful: take nothing new; idle workers leave at once, running jobs get the grace
        period (then async handlers are cancelled), queued jobs go back to the front of their
        tags. Every step runs whatever the previous one raised, for all workers at once.

        A worker whose handler still runs after that is not deregistered: its tag stays held
        until the lease lapses (HEARTBEAT_TIMEOUT), then the leader hands the job back.
        """
        if not self._slots:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.settings.shutdown_grace_period_ms / 1000
        busy = {slot: task for slot, task in self._slots.items() if slot in self._busy}
        idle = [slot for slot in self._slots if slot not in busy]
        # An idle worker waits on Redis or holds a job it has not started: cancel it, and
        # deregistering hands back whatever it was given.
        await cancel_and_wait([self._slots[slot] for slot in idle])
        left = self._ids(idle)
        await asyncio.gather(
            self._each("deregister", self._deregister, left),
            self._each("hand back queued jobs of", self._retire, self._ids(busy)),
        )
        if busy:
            await asyncio.wait(busy.values(), timeout=max(0.0, grace_end - loop.time()))
        late = [task for task in busy.values() if not task.done()]
        for run in self._running.values():
            run.ctx.cancelled = True
        await cancel_and_wait([*late, *([self._heartbeat] if self._heartbeat else [])])
        pending = [run.done for run in self._running.values() if not run.done.done()]
        if pending:  # cancelled async handlers, on their way out
            await asyncio.wait(pending, timeout=HANDLER_STOP_S)
        for wid, run in self._running.items():
            if not run.done.done():
                log.warning(
                    "queue %s: worker %s: the handler of job %s (type %r, tag %r) still runs "
                    "after SHUTDOWN_GRACE_PERIOD; the worker keeps its tag until its lease "
                    "lapses (HEARTBEAT_TIMEOUT), then the leader hands the job back",
                    self.name,
                    wid,
                    run.ctx.job_id,
                    run.type,
                    run.ctx.identify_tag,
                )
        stuck = {wid for wid, run in self._running.items() if not run.done.done()}
        done = [wid for wid in self._ids(busy) if wid not in stuck]
        await self._each("deregister", self._deregister, done)
        self._worker_ids.clear()
        self._busy.clear()
        self._slots, self._heartbeat = {}, None

    def _ids(self, slots: Iterable[int]) -> list[str]:
        return [wid for slot in slots if (wid := self._worker_ids.get(slot))]

    async def _each(
        self, what: str, call: Callable[[str], Awaitable[Any]], worker_ids: list[str]
    ) -> None:
        """``call`` for every worker at once; a failure is logged, and the others go on."""
        results = await asyncio.gather(*(call(wid) for wid in worker_ids), return_exceptions=True)
        for wid, result in zip(worker_ids, results, strict=True):
            if isinstance(result, (LeaseLostError, *RedisTrouble)):
                continue  # the leader recovered it already, or its lease lapses with Redis gone
            if isinstance(result, BaseException):
                log.warning(
                    "queue %s: could not %s worker %s (%s: %s); its lease lapses after "
                    "HEARTBEAT_TIMEOUT and the leader recovers it",
                    self.name,
                    what,
                    wid,
                    type(result).__name__,
                    result,
                )

    async def _retire(self, wid: str) -> None:
        """Hand the worker's queued jobs back, one slice per call, until its queue is empty."""
        while not (await self._scripts.retire(wid, HAND_BACK_BUDGET))[1]:
            pass

    async def _deregister(self, wid: str) -> None:
        """Hand every job of the worker back, one slice per call, until it is gone."""
        while not (await self._scripts.deregister(wid, HAND_BACK_BUDGET))[1]:
            pass

    # -- the loops --------------------------------------------------------------------------
    async def _run_slot(self, slot: int) -> None:
        """One logical worker, supervised: a lost lease means a fresh id; any other error hands
        its jobs back and goes to the supervisor, which logs it and starts the slot again."""
        while not self._stopping:
            try:
                wid = await self._register(slot)
            except ConfigMismatchError as e:
                log.error("%s; this worker stops", e)
                self._stopping = True  # every slot: none may join the queue
                return
            try:
                await self._work(slot, wid)
                return
            except LeaseLostError:
                log.warning("worker %s lost its lease; re-registering under a new id", wid)
            except Exception:
                # A bug must not leave a registered worker that heartbeats but never works.
                with contextlib.suppress(Exception):
                    await self._deregister(wid)
                raise
            finally:
                if not self._stopping:
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

    async def _work(self, slot: int, wid: str) -> None:
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
            self._busy.add(slot)
            try:
                outcome = await self._execute(wid, job)
                job = await self._advance(wid, job, outcome)
            finally:
                self._busy.discard(slot)

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
            message = (
                f"no handler registered for type {job.type!r} in queue {self.name!r}; "
                f"registered: {', '.join(self.handler_types) or 'none'}"
            )
            error = _error_json(job.attempts, None, type_="UnknownTaskType", message=message)
            return self._failed(job, error, f"UnknownTaskType: {message}")
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
        name = f"aq-handler-{self.name}-{job.id}"
        if handler.is_async:
            done: asyncio.Future[Any] = asyncio.create_task(handler.fn(*args), name=name)
        else:
            done = _in_thread(partial(handler.fn, *args), name)
        run = self._running[wid] = _Run(ctx, job.type, done)

        def ended(_: asyncio.Future[Any]) -> None:
            if self._running.get(wid) is run:
                del self._running[wid]

        done.add_done_callback(ended)
        try:
            finished, _ = await asyncio.wait([done], timeout=timeout_s)
            if not finished:
                self._overran(job, ctx, timeout_s)
                if handler.is_async:
                    done.cancel()
                await asyncio.wait([done])  # exclusivity is judged in real time
        except asyncio.CancelledError:  # stop() past the grace period
            if handler.is_async:
                done.cancel()
            raise
        if not finished:
            if not done.cancelled():
                done.exception()  # retrieved: a late result or error is ignored
            return self._failure(
                job, TimeoutError(f"the handler of {job.type!r} ran past {timeout_s} s")
            )
        try:
            result = done.result()
        except asyncio.CancelledError:  # the handler cancelled itself
            return self._failure(job, RuntimeError(f"the handler of {job.type!r} was cancelled"))
        except Exception as exc:  # a handler's failure is the job's outcome, not the worker's
            return self._failure(job, exc)
        try:
            return _Outcome("completed", dumps(result))
        except (TypeError, ValueError) as exc:
            message = (
                f"the handler of {job.type!r} returned a result that is not "
                f"JSON-serialisable: {exc}"
            )
            error = _error_json(job.attempts, None, type_=type(exc).__name__, message=message)
            return self._failed(job, error, f"{type(exc).__name__}: {message}")

    def _overran(self, job: RawJob, ctx: JobContext, timeout_s: float | None) -> None:
        ctx.cancelled = True
        log.warning(
            "queue %s: job %s (type %r, tag %r) ran past its timeout of %s s; ctx.cancelled is "
            "set, and the worker holds the tag until the handler returns",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            timeout_s,
        )

    def _failure(self, job: RawJob, exc: Exception) -> _Outcome:
        """A failed run: retried while attempts are left (after the handler's requested delay,
        or an exponential backoff with full jitter), else failed for good."""
        error = _error_json(job.attempts, exc)
        reason = f"{type(exc).__name__}: {exc}"
        if job.attempts >= job.max_attempts or isinstance(exc, PermanentFailure):
            return self._failed(job, error, reason, exc)
        if isinstance(exc, Retry) and exc.delay_s is not None:
            delay_ms = max(0, round(exc.delay_s * 1000))
        else:
            ceiling = min(
                self.settings.retry_backoff_max_ms, job.backoff_ms * 2 ** (job.attempts - 1)
            )
            delay_ms = round(random.uniform(0, ceiling))
        log.warning(
            "queue %s: job %s (type %r, tag %r) attempt %d/%d failed: %s; retry in %d ms",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            job.attempts,
            job.max_attempts,
            reason,
            delay_ms,
        )
        return _Outcome("retry", error, delay_ms)

    def _failed(
        self, job: RawJob, error: str, reason: str, exc: BaseException | None = None
    ) -> _Outcome:
        """Failed for good: logged at ERROR, with the traceback (only here, not per retry)."""
        log.error(
            "queue %s: job %s (type %r, tag %r) failed at attempt %d/%d: %s",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            job.attempts,
            job.max_attempts,
            reason,
            exc_info=exc,
        )
        return _Outcome("failed", error)

    async def _heartbeats(self) -> None:
        interval_s = self.settings.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            ids = list(self._worker_ids.values())
            if not ids:
                continue
            beat = partial(
                self._scripts.heartbeat, self._epoch, self.settings.heartbeat_timeout_ms, ids
            )
            try:
                lost, cancel = await self._net.retry(beat, what="heartbeat")
            except DataLostError:
                lost, cancel = ids, []  # they re-register; the first to do so reports the loss
            self._lost.update(lost)
            for run in self._running.values():
                # A job of a lost worker runs again elsewhere: let its handler know.
                if run.ctx.job_id in cancel or run.ctx.worker_id in self._lost:
                    run.ctx.cancelled = True
