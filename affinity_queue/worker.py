"""WorkerService: handlers and the worker loops of one queue in this process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import random
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .aio import cancel_and_wait, supervise
from .errors import (
    BatchFailure,
    ConfigMismatchError,
    DataLostError,
    HookError,
    JobNotActiveError,
    LeaseLostError,
    PermanentFailure,
    ProgressTooLargeError,
    Retry,
)
from .lua import RawJob, carried_run
from .models import JobContext, TagEvent
from .observability.logs import NAMED_IDS, named_ids, queue_log
from .queue import dumps
from .retry import RedisTrouble
from .runtime import QueueRuntime

if TYPE_CHECKING:
    from .observability import MetricsRecorder, TraceRecorder

log = logging.getLogger("affinity_queue.worker")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
HookT = TypeVar("HookT", bound=Callable[..., Any])
Middleware = Callable[[JobContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""``async def mw(ctx, call_next)``: code before and after ``await call_next()`` runs around the
handler; it sees the result, or the error as it propagates; raising fails the job."""

WAIT_CAP_S = 5.0
"""Longest single blocking wait: the client's socket timeout must exceed it."""
_clock = (
    partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)
"""Seconds that go on while the machine sleeps (Linux's boot time), for lease deadlines."""
HAND_BACK_BUDGET = 500
"""Jobs one retire or deregister call hands back; a longer queue takes more calls."""
YIELD_S = 0.001
"""Longest a run of quick jobs keeps the event loop before it lets other tasks (requests, the
other workers, the heartbeat) run."""
HANDLER_STOP_S = 1.0
"""How long stop() waits, after the grace period, for cancelled async handlers to end."""
MAX_PROGRESS_BYTES = 4096
"""Largest ``ctx.set_progress()`` value, as JSON bytes: progress is a number or a small object."""
PROGRESS_INTERVAL_S = 0.5
"""Shortest time between two progress writes of one job; faster calls are coalesced."""
MAX_BATCH_CALL = 200
"""Largest ``max_size`` of a batch handler: one ``advance`` records a whole batch and takes the
next, and Redis serves nobody else meanwhile (about 18 µs per task here: 4 ms for 200)."""
PREFETCH = 20
"""Jobs of its tag a worker takes in one ``advance`` while its jobs finish within QUICK_RUN_S:
it runs them one after the other without a round trip in between."""
PREFETCH_MAX = 100
"""The most it takes: as many as its last run's pace fits in QUICK_RUN_S, when that is more than
PREFETCH (a hot tag of quick handlers costs one round trip per 100 tasks)."""
QUICK_RUN_S = 0.005
"""A run this short (each job's, handler included) lets the worker's next take be PREFETCH jobs
or more (next_take); a longer one, a failure or a new worker takes one job at a time."""


async def _call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    return await result if inspect.isawaitable(result) else result


@dataclass(slots=True)
class _Binding:
    """This worker's hold on a tag, as its loop sees it: from the first job of the tag it takes
    to the ``advance`` that releases it."""

    tag: str
    state: dict[str, Any] = field(default_factory=dict)
    jobs: int = 0
    """Jobs run in this binding."""


@dataclass(eq=False, slots=True)
class _Progress:
    """``ctx.set_progress`` of one run: one script call per write, at most one write per
    PROGRESS_INTERVAL_S (a faster call leaves its value for a write at the interval's end)."""

    service: WorkerService
    worker_id: str
    job_id: str
    last: float = -PROGRESS_INTERVAL_S
    pending: str | None = None
    timer: asyncio.TimerHandle | None = None

    async def __call__(self, value: Any) -> None:
        data = dumps(value)
        if (size := len(data.encode())) > MAX_PROGRESS_BYTES:
            raise ProgressTooLargeError(self.job_id, size, MAX_PROGRESS_BYTES)
        loop = asyncio.get_running_loop()
        if loop.time() - self.last >= PROGRESS_INTERVAL_S:
            self.pending = None
            await self._write(data)
            return
        self.pending = data
        if self.timer is None:
            self.timer = loop.call_at(self.last + PROGRESS_INTERVAL_S, self._flush)

    async def _write(self, data: str) -> None:
        self.last = asyncio.get_running_loop().time()
        await self.service._scripts.progress(self.worker_id, self.job_id, data)

    def _flush(self) -> None:
        self.timer = None
        if self.pending is not None:
            data, self.pending = self.pending, None
            self.service._spawn(self._write(data), f"progress of job {self.job_id}")


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[..., Any]
    is_async: bool
    wants_context: bool
    timeout_s: float | None
    max_size: int = 0
    """The most tasks of one call, for a batch handler; 0 for a handler of one task."""

    @classmethod
    def of(cls, fn: Callable[..., Any], timeout_s: float | None, max_size: int = 0) -> _Handler:
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
        return cls(fn, inspect.iscoroutinefunction(fn), wants_context, timeout_s, max_size)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What ``advance`` records for a finished run: completed, failed, or retry after a delay;
    when it started and ended (``time.perf_counter()``; 0 when unknown)."""

    kind: str
    data: str
    retry_delay_ms: int = 0
    started: float = 0.0
    ended: float = 0.0

    def timed(self, started: float, ended: float) -> _Outcome:
        # Not dataclasses.replace(): this runs once per job, and replace() costs 2.6 times more.
        return _Outcome(self.kind, self.data, self.retry_delay_ms, started, ended)


def next_take(jobs: int, elapsed_s: float) -> int:
    """What a worker takes after a quick run of ``jobs`` jobs that took ``elapsed_s``: as many
    as that pace fits in QUICK_RUN_S, from PREFETCH to PREFETCH_MAX. So a run it holds is at
    most PREFETCH jobs or about QUICK_RUN_S of work, whichever is more: what a crash reruns."""
    fits = QUICK_RUN_S * jobs / max(elapsed_s, 1e-9)
    return max(PREFETCH, min(PREFETCH_MAX, int(fits)))


def _error_json(
    attempt: int, exc: BaseException | None, *, type_: str = "", message: str = ""
) -> str:
    if exc is not None:
        type_, message = type(exc).__name__, str(exc)
    trace = "".join(traceback.format_exception(exc)) if exc is not None else ""
    return dumps({"type": type_, "message": message, "traceback": trace, "attempt": attempt})


@dataclass(frozen=True, slots=True)
class _Run:
    """A handler run of one worker (one job, or a batch): ``done`` resolves when the handler's
    code has returned (not when we stop waiting for it), so the worker and its tag are held
    until then; ``cancel`` interrupts what can be interrupted (async code)."""

    contexts: list[JobContext]
    type: str
    done: asyncio.Future[Any]
    cancel: Callable[[], Any]


if sys.version_info >= (3, 12):

    def _handler_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A handler's task, started at once (eager): a handler that returns without waiting
        on anything has ended when this returns, and its worker goes on in the same loop turn
        instead of three turns later. Its context is still its own copy. A loop with a task
        factory of its own (an instrumentation) gets its tasks from it, started as it says."""
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is not None:
            return loop.create_task(coro, name=name)
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)

else:

    def _handler_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A handler's task (Python 3.11 has no eager start: it starts in the next turn)."""
        return asyncio.create_task(coro, name=name)


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


def _when_all_returned(task: asyncio.Task[Any], threads: list[asyncio.Future[Any]]) -> Any:
    """A future with ``task``'s outcome that resolves once ``task`` and every thread it started
    have ended: cancelling the task (a timeout) leaves a sync handler's thread running."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def settle(_: object) -> None:
        if running := [f for f in threads if not f.done()]:
            running[0].add_done_callback(settle)
            return
        if out.done():
            return
        if task.cancelled():
            out.cancel()
        elif (error := task.exception()) is not None:
            out.set_exception(error)
        else:
            out.set_result(task.result())
        for f in threads:  # retrieved: their outcome is the task's
            if not f.cancelled():
                f.exception()

    task.add_done_callback(settle)
    return out


_NOTHING = _Outcome("", "")
"""For an ``advance`` that finishes nothing and only takes the next job."""


def _new_worker_id(slot: int) -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}-{slot}"


class WorkerService(QueueRuntime):
    """Runs ``WORKER_COUNT`` logical workers; each runs its own jobs one at a time, in order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._log = queue_log(log, self.name)
        self._handlers: dict[str, _Handler] = {}
        self._batch_sizes: dict[str, int] = {}  # batch handler types -> their max_size
        self._take: dict[int, int] = {}  # slots whose last run was quick: what they take next
        self._stopping = False
        self._slots: dict[int, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._worker_ids: dict[int, str] = {}
        self._busy: set[int] = set()  # slots holding a job, from taking it to recording it
        self._epoch = ""
        self._running: dict[str, _Run] = {}  # by worker id: handlers whose code still runs
        self._lost: set[str] = set()  # worker ids whose lease the heartbeat found gone
        self._sure_until: dict[str, float] = {}  # worker id -> _clock() its lease surely holds to
        self._renewal: asyncio.Task[list[str]] | None = None  # the renewal slots wait on
        self._bindings: dict[int, _Binding] = {}  # by slot: the tag it holds
        self._startup: list[Callable[[], Any]] = []
        self._shutdown: list[Callable[[], Any]] = []
        self._started_up = False
        self._middleware: list[Middleware] = []
        self._on_bound: list[Callable[[TagEvent], Any]] = []
        self._on_released: list[Callable[[TagEvent], Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.state: dict[str, Any] = {}
        """What the ``on_startup`` hooks returned, merged; every handler sees it as
        ``ctx.state``."""
        self.metrics: MetricsRecorder | None = None
        self.tracer: TraceRecorder | None = None

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
        self._batch_sizes.pop(type, None)

    def register_batch_handler(
        self, type: str, fn: Callable[..., Any], *, max_size: int, timeout_s: float | None = None
    ) -> None:
        """Run ``fn(payloads)`` or ``fn(payloads, contexts)`` for up to ``max_size`` jobs of
        ``type`` at once: jobs of one tag, in order, that the worker holding the tag already has
        queued (it does not wait for more). ``fn`` returns one result per job, in order; raising
        fails the first job, and :class:`BatchFailure` reports the results of a prefix and the
        failure of the job after it. The jobs after a failed one go back to the front of their
        tag unstarted; the failed one follows the retry rules. ``timeout_s`` bounds one call (the
        smallest of the jobs' own timeouts wins; TASK_TIMEOUT is the default); a call that runs
        past it fails its first job. A batch counts as that many jobs of the tag's
        MAX_BATCH_SIZE, so ``max_size`` may not exceed it.
        """
        if not type:
            raise ValueError("handler type must be a non-empty string")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        if max_size > MAX_BATCH_CALL:
            raise ValueError(
                f"max_size {max_size} of the batch handler of {type!r} is over {MAX_BATCH_CALL}: "
                "one script call records a whole batch, and Redis serves nobody else meanwhile"
            )
        if max_size > self.settings.max_batch_size:
            raise ValueError(
                f"max_size {max_size} of the batch handler of {type!r} exceeds MAX_BATCH_SIZE "
                f"{self.settings.max_batch_size} of queue {self.name!r}: a worker runs at most "
                "MAX_BATCH_SIZE jobs of a tag in a row, so no batch could be larger"
            )
        self._handlers[type] = _Handler.of(fn, timeout_s, max_size)
        self._batch_sizes[type] = max_size

    def handler(
        self, type: str, *, timeout_s: float | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: HandlerT) -> HandlerT:
            self.register_handler(type, fn, timeout_s=timeout_s)
            return fn

        return decorate

    def batch_handler(
        self, type: str, *, max_size: int, timeout_s: float | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator form of :meth:`register_batch_handler`."""

        def decorate(fn: HandlerT) -> HandlerT:
            self.register_batch_handler(type, fn, max_size=max_size, timeout_s=timeout_s)
            return fn

        return decorate

    # -- hooks ------------------------------------------------------------------------------
    def on_startup(self, fn: HookT) -> HookT:
        """Run ``fn()`` (sync or async) when the workers start, before they take a job; a
        mapping it returns is merged into ``ctx.state``. Raising stops the start
        (:class:`HookError`)."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: HookT) -> HookT:
        """Run ``fn()`` after the workers stopped (in reverse order of registration); an error
        is logged and the other hooks still run."""
        self._shutdown.append(fn)
        return fn

    def middleware(self, fn: Middleware) -> Middleware:
        """Wrap every run in ``fn(ctx, call_next)``; the first registered is the outermost."""
        self._middleware.append(fn)
        return fn

    def on_tag_bound(self, fn: HookT) -> HookT:
        """Run ``fn(event: TagEvent)`` when a worker takes a tag, before its first job of the
        tag (warm ``event.tag_state`` here). Raising fails that job; the next job of the tag
        calls the hook again."""
        self._on_bound.append(fn)
        return fn

    def on_tag_released(self, fn: HookT) -> HookT:
        """Run ``fn(event: TagEvent)`` when a worker gives a tag up (``event.reason`` says why),
        before its ``tag_state`` is dropped. An error is logged."""
        self._on_released.append(fn)
        return fn

    async def run_startup(self) -> None:
        """The ``on_startup`` hooks, once per start; the first that raises stops the start
        (:class:`HookError`), and no ``on_shutdown`` hook runs (as for a failed lifespan)."""
        if self._started_up:
            return
        self.state.clear()
        for hook in self._startup:
            try:
                result = await _call_hook(hook)
            except Exception as e:
                raise HookError(self.name, getattr(hook, "__qualname__", repr(hook)), e) from e
            if isinstance(result, Mapping):
                self.state.update(result)
        self._started_up = True

    async def run_shutdown(self) -> None:
        if self._started_up:
            self._started_up = False
            await self._run_shutdown(self._shutdown)

    async def _run_shutdown(self, hooks: list[Callable[[], Any]]) -> None:
        for hook in reversed(hooks):
            try:
                await _call_hook(hook)
            except Exception:
                self._log.exception("queue %s: the on_shutdown hook %r raised", self.name, hook)

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        """Run ``coro`` in the background; a failure is logged, never raised."""

        async def guarded() -> None:
            try:
                await coro
            except Exception as e:
                self._log.warning("queue %s: %s failed: %r", self.name, what, e)

        task = asyncio.ensure_future(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                logger=self._log,
            )
            for slot in range(self.settings.worker_count)
        }
        self._heartbeat = supervise(
            self._heartbeats,
            name=f"aq-hb-{self.name}",
            what=f"queue {self.name}: heartbeats",
            running=self._runs,
            logger=self._log,
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
        await cancel_and_wait([self._slots[slot] for slot in idle], logger=self._log)
        left = self._ids(idle)
        await asyncio.gather(
            self._each("deregister", partial(self._deregister, unstarted=True), left),
            self._each("hand back queued jobs of", self._retire, self._ids(busy)),
        )
        if busy:
            await asyncio.wait(busy.values(), timeout=max(0.0, grace_end - loop.time()))
        late = [task for task in busy.values() if not task.done()]
        for run in self._running.values():
            for ctx in run.contexts:
                ctx.cancelled = True
        await cancel_and_wait(
            [*late, *(t for t in (self._heartbeat, self._renewal) if t is not None)],
            logger=self._log,
        )
        pending = [run.done for run in self._running.values() if not run.done.done()]
        if pending:  # cancelled async handlers, on their way out
            await asyncio.wait(pending, timeout=HANDLER_STOP_S)
        for wid, run in self._running.items():
            if not run.done.done():
                self._log.warning(
                    "queue %s: worker %s: the handler of job %s (type %r, tag %r) still runs "
                    "after SHUTDOWN_GRACE_PERIOD; the worker keeps its tag until its lease "
                    "lapses (HEARTBEAT_TIMEOUT), then the leader hands the job back",
                    self.name,
                    wid,
                    run.contexts[0].job_id,
                    run.type,
                    run.contexts[0].identify_tag,
                )
        stuck = {wid for wid, run in self._running.items() if not run.done.done()}
        done = [wid for wid in self._ids(busy) if wid not in stuck]
        await self._each("deregister", self._deregister, done)
        for slot in list(self._bindings):
            await self._release(slot, self._worker_ids.get(slot, ""), "released_on_stop")
        self._worker_ids.clear()
        self._busy.clear()
        self._slots, self._heartbeat, self._renewal = {}, None, None
        self._lost.clear()
        self._sure_until.clear()

    def _ids(self, slots: Iterable[int]) -> list[str]:
        return [wid for slot in slots if (wid := self._worker_ids.get(slot))]

    async def _each(
        self, what: str, call: Callable[[str], Awaitable[Any]], worker_ids: list[str]
    ) -> None:
        """``call`` for every worker at once; a failure is logged, and the others go on.

        The calls share the pool, so a hung Redis would fail them a pool's worth at a time, one
        REDIS_TIMEOUT per wave (12 s for 1,000 workers). Once no call has been answered for
        REDIS_TIMEOUT the rest are given up: their leases lapse and the leader recovers them."""
        tasks = [asyncio.ensure_future(call(wid)) for wid in worker_ids]
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=self.settings.redis_timeout_ms / 1000
                )
                if all(t.cancelled() or isinstance(t.exception(), RedisTrouble) for t in done):
                    break
        finally:
            if pending:
                await cancel_and_wait(pending, logger=self._log)
        if pending:
            self._log.warning(
                "queue %s: Redis answered nothing for REDIS_TIMEOUT; %d worker(s) left without "
                "their %s call; their leases lapse after HEARTBEAT_TIMEOUT and the leader "
                "recovers them",
                self.name,
                len(pending),
                what,
            )
        for wid, task in zip(worker_ids, tasks, strict=True):
            error = None if task.cancelled() else task.exception()
            if error is None or isinstance(error, (LeaseLostError, *RedisTrouble)):
                continue  # the leader recovered it already, or its lease lapses with Redis gone
            self._log.warning(
                "queue %s: could not %s worker %s (%s: %s); its lease lapses after "
                "HEARTBEAT_TIMEOUT and the leader recovers it",
                self.name,
                what,
                wid,
                type(error).__name__,
                error,
            )

    async def _retire(self, wid: str) -> None:
        """Hand the worker's queued jobs back, one slice per call, until its queue is empty."""
        while not (await self._scripts.retire(wid, HAND_BACK_BUDGET))[1]:
            pass

    async def _deregister(self, wid: str, unstarted: bool = False) -> None:
        """Hand every job of the worker back, one slice per call, until it is gone; the jobs
        handed back are logged (the first few by id). ``unstarted``: the worker was idle, so
        no job of a run that dispatch sent with its wake-up has started."""
        total, gone, named = 0, False, list[str]()
        while not gone:
            n, gone, ids = await self._scripts.deregister(wid, HAND_BACK_BUDGET, unstarted)
            total += n
            named += ids[: NAMED_IDS - len(named)]
        if total:
            self._log.info(
                "queue %s: worker %s left; %d job(s) back to their tags: %s",
                self.name,
                wid,
                total,
                named_ids(named, total),
                extra={"worker_id": wid, "job_ids": named},
            )

    # -- the loops --------------------------------------------------------------------------
    async def _run_slot(self, slot: int) -> None:
        """One logical worker, supervised: a lost lease means a fresh id; any other error hands
        its jobs back and goes to the supervisor, which logs it and starts the slot again."""
        while not self._stopping:
            try:
                wid = await self._register(slot)
            except ConfigMismatchError as e:
                self._log.error("%s; this worker stops", e)
                self._stopping = True  # every slot: none may join the queue
                return
            try:
                await self._work(slot, wid)
                return
            except LeaseLostError as e:
                running = f"; its run of job {e.job_id} was refused" if e.job_id else ""
                self._log.warning(
                    "queue %s: worker %s lost its lease%s; the leader hands its jobs back; "
                    "re-registering under a new id",
                    self.name,
                    wid,
                    running,
                    extra={"worker_id": wid, "job_id": e.job_id},
                )
                await self._release(slot, wid, "lease_expired")
            except Exception:
                # A bug must not leave a registered worker that heartbeats but never works.
                with contextlib.suppress(Exception):
                    await self._deregister(wid)
                await self._release(slot, wid, "worker_error")
                raise
            finally:
                if not self._stopping:
                    self._worker_ids.pop(slot, None)
                    self._lost.discard(wid)
                    self._sure_until.pop(wid, None)

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
        sent = _clock()
        epoch = await self._net.retry(register, what=f"worker {wid}: register")
        if self._epoch and epoch != self._epoch:
            self._log.error("%s", DataLostError(self.name))
        self._epoch = epoch
        self._worker_ids[slot] = wid
        self._sure_until[wid] = sent + self._sure_s
        return wid

    async def _work(self, slot: int, wid: str) -> None:
        """Run jobs until stopping. Finishing one run and taking the next is one ``advance``."""
        self._take.pop(slot, None)
        run = await self._advance(slot, wid, [], [])
        refused = await self._track(slot, wid, run, _NOTHING)
        wake_key = self._keys.worker_wake(wid)
        wait_s = min(self.settings.heartbeat_interval_ms / 1000, WAIT_CAP_S)
        while True:
            if not run:
                if self._stopping:
                    return
                woken = await self._net.retry(
                    lambda: self._blocking.blpop([wake_key], timeout=wait_s),
                    what=f"worker {wid}: wait",
                )
                # Woken: bound (by dispatch, an add or another worker's advance), with the run
                # that started carried (or nudged by the heartbeat: then ask for the run).
                carried = carried_run(cast(str, woken[1])) if woken else []  # decoded replies
                if self._stopping:
                    if carried:  # not run: back to the front of the worker's queue, unstarted
                        await self._advance(slot, wid, carried, [])
                    return
                if wid in self._lost:  # the heartbeat found the lease gone
                    raise LeaseLostError(wid)
                if carried:
                    run = carried
                elif woken or await self._has_work(wid):
                    run = await self._advance(slot, wid, [], [])
                else:
                    continue
                refused = await self._track(slot, wid, run, _NOTHING)
                continue
            self._busy.add(slot)
            try:
                outcomes = await self._run_all(slot, wid, run, refused)
                try:
                    run = await self._advance(slot, wid, run, outcomes)
                except LeaseLostError as e:
                    e.job_id = run[0].id if outcomes else None
                    raise
                refused = await self._track(slot, wid, run, outcomes[-1] if outcomes else _NOTHING)
            finally:
                self._busy.discard(slot)

    async def _run_all(
        self, slot: int, wid: str, run: list[RawJob], refused: Exception | None
    ) -> list[_Outcome]:
        """The outcomes of a prefix of ``run``: a batch handler's call, or one job after the
        other until one does not complete or the worker stops. At least the first job, unless
        the stop began while the lease was being confirmed (then none)."""
        binding = self._bindings.get(slot)
        tag_state = binding.state if binding else {}
        handler = self._handlers.get(run[0].type)
        if not self._lease_sure(wid):
            await self._confirm_lease(wid)
            if self._stopping:
                return []  # stop began meanwhile: the run goes back unstarted
        began = first = yielded = time.perf_counter()
        quick = False
        if handler is not None and handler.max_size and refused is None:
            outcomes = await self._execute_batch(wid, run, handler, tag_state)
            ended = time.perf_counter()
            outcomes = [o.timed(began, ended) for o in outcomes]
            if self.metrics is not None:
                spent = (time.perf_counter() - began) / len(outcomes)
                for job, outcome in zip(run, outcomes, strict=False):
                    self.metrics.started(job.type, job.wait_ms)
                    self.metrics.finished(job.type, outcome.kind, spent)
        else:
            outcomes = []
            for job in run:
                if outcomes and (self._stopping or not self._lease_sure(wid)):
                    break  # advance hands the rest back (or finds the lease gone)
                if self.metrics is not None:
                    self.metrics.started(job.type, job.wait_ms)
                outcome = await self._execute(wid, job, tag_state, refused)
                refused = None
                now = time.perf_counter()
                outcome = outcome.timed(began, now)
                if self.metrics is not None:
                    self.metrics.finished(job.type, outcome.kind, now - began)
                quick = now - began < QUICK_RUN_S
                began = now
                outcomes.append(outcome)
                if outcome.kind != "completed" or not quick:
                    break
                if now - yielded >= YIELD_S:  # eager handlers that never wait never yield
                    await asyncio.sleep(0)
                    yielded = time.perf_counter()
        if binding is not None:
            binding.jobs += len(outcomes)
        if len(outcomes) == len(run) and all(o.kind == "completed" for o in outcomes) and quick:
            self._take[slot] = next_take(len(outcomes), began - first)
        else:
            self._take.pop(slot, None)
        return outcomes

    async def _has_work(self, wid: str) -> bool:
        """Whether Redis holds work for this idle worker that no wake-up announces: after a
        failover to a replica that missed the last writes, Redis is back at an older state than
        the worker lived (an active job, queued jobs, the wake-up already taken). One read per
        idle wait; ``advance`` then goes on from what Redis holds."""
        keys = self._keys

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.worker_state(wid), "active")
                pipe.llen(keys.worker_queue(wid))
                return await pipe.execute()

        active, queued = await self._net.retry(read, what=f"worker {wid}: check")
        return bool(active) or queued > 0

    async def _track(
        self, slot: int, wid: str, run: list[RawJob], last: _Outcome
    ) -> Exception | None:
        """Follow this worker's binding from what ``advance`` gave it: no job (it was not
        stopping) means the script released the tag; a job of another tag, or of the same tag
        after a full batch (the script bound the worker again at once), means a new binding; a
        job of the same tag otherwise continues the binding (its batch count goes on).
        Returns the error of an ``on_tag_bound`` hook, which fails the run's first job."""
        job = run[0] if run else None
        binding = self._bindings.get(slot)
        if binding is not None and (
            job is None
            or job.identify_tag != binding.tag
            or binding.jobs >= self.settings.max_batch_size
        ):
            if job is None and self._stopping:
                return None  # nothing was released: stop() hands back and releases
            if last.kind == "retry" and self.settings.retry_order.value == "strict":
                reason = "retry_hold"
            elif binding.jobs >= self.settings.max_batch_size:
                reason = "batch_full"
            else:
                reason = "drained"
            await self._release(slot, wid, reason)
            binding = None
        if job is None:
            return None
        if binding is None:
            binding = _Binding(job.identify_tag)
            event = TagEvent(self.name, job.identify_tag, wid, binding.state)
            for hook in self._on_bound:
                try:
                    await _call_hook(hook, event)
                except Exception as e:
                    return e  # not bound as far as the hooks go: the next job tries again
            self._bindings[slot] = binding
        return None

    async def _release(self, slot: int, wid: str, reason: str) -> None:
        binding = self._bindings.pop(slot, None)
        if binding is None:
            return
        if self.metrics is not None:
            self.metrics.handover(reason)
        event = TagEvent(self.name, binding.tag, wid, binding.state, reason)
        for hook in self._on_released:
            try:
                await _call_hook(hook, event)
            except Exception:
                self._log.exception(
                    "queue %s: the on_tag_released hook %r raised (tag %r, worker %s, %s)",
                    self.name,
                    hook,
                    binding.tag,
                    wid,
                    reason,
                    extra={"queue": self.name, "tag": binding.tag, "worker_id": wid},
                )

    async def _advance(
        self, slot: int, wid: str, run: list[RawJob], outcomes: list[_Outcome]
    ) -> list[RawJob]:
        """Record the outcomes of ``run``'s first jobs (the rest go back unstarted) and take
        the next run: PREFETCH or more jobs after a quick run, else one (a batch type: its
        max_size)."""
        sent = time.perf_counter()

        def ago_ms(t: float) -> int | str:
            return round((sent - t) * 1000) if t else ""

        done: list[Any] = [
            (job.id, o.kind, o.data, ago_ms(o.started), ago_ms(o.ended), job.attempts)
            for job, o in zip(run, outcomes, strict=False)
        ]
        done += [(job.id, "", "", "", "", job.attempts) for job in run[len(outcomes) :]]
        take = 0 if self._stopping else self._take.get(slot, 1)
        last = outcomes[-1] if outcomes else _NOTHING
        order = self.settings.retry_order.value

        async def call() -> list[RawJob]:
            nonlocal done
            try:
                return await self._scripts.advance_run(
                    wid,
                    done,
                    take,
                    batch_sizes=self._batch_sizes,
                    retry_delay_ms=last.retry_delay_ms,
                    retry_order=order,
                )
            except JobNotActiveError:
                # Only after a retry: the first attempt landed but its reply was lost. Asking
                # again without finishing returns the run that attempt started, if any.
                done = []
                return await self._scripts.advance_run(
                    wid, done, take, batch_sizes=self._batch_sizes
                )

        return await self._net.retry(call, what=f"worker {wid}: advance")

    def _job_extra(self, job: RawJob, wid: str = "") -> dict[str, Any]:
        """The structured fields of a job's log lines (``extra``)."""
        return {
            "queue": self.name,
            "job_id": job.id,
            "job_type": job.type,
            "tag": job.identify_tag,
            "worker_id": wid,
            "attempt": job.attempts,
        }

    async def _execute(
        self, wid: str, job: RawJob, tag_state: dict[str, Any], refused: Exception | None
    ) -> _Outcome:
        if refused is not None:
            return self._failure(job, refused, wid)
        handler = self._handlers.get(job.type)
        if handler is None:
            message = (
                f"no handler registered for type {job.type!r} in queue {self.name!r}; "
                f"registered: {', '.join(self.handler_types) or 'none'}"
            )
            error = _error_json(job.attempts, None, type_="UnknownTaskType", message=message)
            return self._failed(job, error, f"UnknownTaskType: {message}", wid=wid)
        ctx = self._context(wid, job, tag_state)
        args: tuple[Any, ...] = (json.loads(job.payload),)
        if handler.wants_context:
            args += (ctx,)
        timeout_s = (
            job.timeout_ms / 1000
            if job.timeout_ms
            else handler.timeout_s or (self.settings.task_timeout_ms / 1000 or None)
        )
        since = asyncio.get_running_loop().time()  # an eager start runs code before _hold
        done, cancel = self._start_run(handler, args, ctx, job)
        if not await self._hold(wid, _Run([ctx], job.type, done, cancel), job, timeout_s, since):
            return self._failure(
                job, TimeoutError(f"the handler of {job.type!r} ran past {timeout_s} s"), wid
            )
        try:
            result = done.result()
        except asyncio.CancelledError:  # the handler cancelled itself
            return self._failure(
                job, RuntimeError(f"the handler of {job.type!r} was cancelled"), wid
            )
        except Exception as exc:  # a handler's failure is the job's outcome, not the worker's
            return self._failure(job, exc, wid)
        try:
            return _Outcome("completed", dumps(result))
        except (TypeError, ValueError) as exc:
            message = (
                f"the handler of {job.type!r} returned a result that is not "
                f"JSON-serialisable: {exc}"
            )
            error = _error_json(job.attempts, None, type_=type(exc).__name__, message=message)
            return self._failed(job, error, f"{type(exc).__name__}: {message}", wid=wid)

    def _context(self, wid: str, job: RawJob, tag_state: dict[str, Any]) -> JobContext:
        return JobContext(
            job_id=job.id,
            identify_tag=job.identify_tag,
            worker_id=wid,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            queue=self.name,
            state=self.state,
            tag_state=tag_state,
            _progress=_Progress(self, wid, job.id),
        )

    async def _execute_batch(
        self, wid: str, run: list[RawJob], handler: _Handler, tag_state: dict[str, Any]
    ) -> list[_Outcome]:
        """One call of a batch handler for ``run`` (jobs of one type); the outcomes of the
        jobs up to the first that did not complete."""
        first = run[0]
        contexts = [self._context(wid, job, tag_state) for job in run]
        args: tuple[Any, ...] = ([json.loads(job.payload) for job in run],)
        if handler.wants_context:
            args += (contexts,)
        own = [job.timeout_ms / 1000 for job in run if job.timeout_ms]
        timeout_s = (
            min(own) if own else handler.timeout_s or (self.settings.task_timeout_ms / 1000 or None)
        )
        name = f"aq-handler-{self.name}-{first.id}+{len(run) - 1}"
        since = asyncio.get_running_loop().time()
        if handler.is_async:
            task = _handler_task(handler.fn(*args), name)
            done: asyncio.Future[Any] = task
            cancel: Callable[[], Any] = task.cancel
        else:
            done, cancel = _in_thread(partial(handler.fn, *args), name), lambda: None
        what = f"the batch handler of {first.type!r}"
        handling = _Run(contexts, first.type, done, cancel)
        if not await self._hold(wid, handling, first, timeout_s, since):
            return [self._failure(first, TimeoutError(f"{what} ran past {timeout_s} s"), wid)]
        try:
            results = done.result()
        except asyncio.CancelledError:  # the handler cancelled itself
            return [self._failure(first, RuntimeError(f"{what} was cancelled"), wid)]
        except BatchFailure as bf:
            if bf.index >= len(run):
                wrong = ValueError(f"{what} raised {bf!r} for a batch of {len(run)} tasks")
                return [self._failure(first, wrong, wid)]
            outcomes = self._results(run, bf.results, what, wid)
            if len(outcomes) < bf.index:  # a result that is not JSON failed earlier
                return outcomes
            return [*outcomes, self._failure(run[bf.index], bf.error, wid)]
        except Exception as exc:  # a handler's failure is the job's outcome, not the worker's
            return [self._failure(first, exc, wid)]
        if not isinstance(results, (list, tuple)) or len(results) != len(run):
            got = f"{len(results)} results" if isinstance(results, (list, tuple)) else results
            bad = TypeError(f"{what} returned {got!r} for {len(run)} tasks: one result each")
            return [self._failure(first, bad, wid)]
        return self._results(run, results, what, wid)

    def _results(
        self, run: list[RawJob], results: Sequence[Any], what: str, wid: str
    ) -> list[_Outcome]:
        """Completed outcomes for ``results`` (one per job of ``run``, in order), up to a
        result that is not JSON: that job fails for good."""
        outcomes: list[_Outcome] = []
        for job, result in zip(run, results, strict=False):
            try:
                outcomes.append(_Outcome("completed", dumps(result)))
            except (TypeError, ValueError) as exc:
                message = f"{what} returned a result that is not JSON-serialisable: {exc}"
                error = _error_json(job.attempts, None, type_=type(exc).__name__, message=message)
                reason = f"{type(exc).__name__}: {message}"
                outcomes.append(self._failed(job, error, reason, wid=wid))
                break
        return outcomes

    def _start_run(
        self, handler: _Handler, args: tuple[Any, ...], ctx: JobContext, job: RawJob
    ) -> tuple[asyncio.Future[Any], Callable[[], Any]]:
        """Start the handler (inside the middleware and the consumer span, when there are
        any); returns the future of its real end and what interrupts it."""
        name = f"aq-handler-{self.name}-{job.id}"
        if not self._middleware and self.tracer is None:
            if handler.is_async:
                task = _handler_task(handler.fn(*args), name)
                return task, task.cancel
            return _in_thread(partial(handler.fn, *args), name), lambda: None
        threads: list[asyncio.Future[Any]] = []

        async def innermost() -> Any:
            if handler.is_async:
                return await handler.fn(*args)
            threads.append(_in_thread(partial(handler.fn, *args), name))
            return await asyncio.shield(threads[-1])  # a timeout cannot stop the thread

        call: Callable[[], Awaitable[Any]] = innermost
        for mw in reversed(self._middleware):
            call = partial(mw, ctx, call)
        if (tracer := self.tracer) is not None:
            inner = call

            async def traced() -> Any:
                async with tracer.consuming(ctx, job.type, partial(self._carrier, job.id)):
                    return await inner()

            call = traced
        task = _handler_task(call(), name)  # type: ignore[arg-type]
        return _when_all_returned(task, threads), task.cancel

    async def _carrier(self, job_id: str) -> dict[str, str]:
        """The trace context stored by the call that added the job (one per request token)."""
        raw = await self._redis.get(self._keys.trace(job_id.partition("-")[2]))
        return dict(json.loads(raw)) if raw else {}

    async def _hold(
        self, wid: str, run: _Run, job: RawJob, timeout_s: float | None, since: float
    ) -> bool:
        """Wait for ``run`` to end, at most ``timeout_s`` after ``since`` (its start, by the
        loop's clock); past it, flag its contexts, interrupt it and wait for its real end all
        the same (exclusivity is judged in real time). True when it ended in time; a late
        result or error is ignored."""
        if run.done.done():  # an eager handler that never waited
            return True
        self._running[wid] = run
        # One future and at most one timer per run: asyncio.wait() costs a set, a counter and
        # a callback per future for the same thing, and this runs once per job.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()

        def ended(_: asyncio.Future[Any]) -> None:
            if self._running.get(wid) is run:
                del self._running[wid]
            if not waiter.done():
                waiter.set_result(True)

        def overran() -> None:
            if not waiter.done():  # a run that ended in the same turn ended in time
                waiter.set_result(run.done.done())

        run.done.add_done_callback(ended)
        timer = loop.call_at(since + timeout_s, overran) if timeout_s is not None else None
        try:
            finished = await waiter
            if not finished:
                self._overran(job, run.contexts, timeout_s)
                run.cancel()
                await asyncio.wait([run.done])
        except asyncio.CancelledError:  # stop() past the grace period
            run.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not finished and not run.done.cancelled():
            run.done.exception()  # retrieved
        return finished

    def _overran(self, job: RawJob, contexts: list[JobContext], timeout_s: float | None) -> None:
        for ctx in contexts:
            ctx.cancelled = True
        self._log.warning(
            "queue %s: job %s (type %r, tag %r%s) ran past its timeout of %s s; ctx.cancelled "
            "is set, and the worker holds the tag until the handler returns",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            f", in a batch of {len(contexts)}" if len(contexts) > 1 else "",
            timeout_s,
            extra=self._job_extra(job, contexts[0].worker_id),
        )

    def _failure(self, job: RawJob, exc: Exception, wid: str = "") -> _Outcome:
        """A failed run: retried while attempts are left (after the handler's requested delay,
        or an exponential backoff with full jitter), else failed for good."""
        error = _error_json(job.attempts, exc)
        reason = f"{type(exc).__name__}: {exc}"
        if job.attempts >= job.max_attempts or isinstance(exc, PermanentFailure):
            return self._failed(job, error, reason, exc, wid)
        if isinstance(exc, Retry) and exc.delay_s is not None:
            delay_ms = max(0, round(exc.delay_s * 1000))
        else:
            ceiling = min(
                self.settings.retry_backoff_max_ms, job.backoff_ms * 2 ** (job.attempts - 1)
            )
            delay_ms = round(random.uniform(0, ceiling))
        self._log.warning(
            "queue %s: job %s (type %r, tag %r) attempt %d/%d failed: %s; retry in %d ms",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            job.attempts,
            job.max_attempts,
            reason,
            delay_ms,
            extra=self._job_extra(job, wid),
        )
        return _Outcome("retry", error, delay_ms)

    def _failed(
        self,
        job: RawJob,
        error: str,
        reason: str,
        exc: BaseException | None = None,
        wid: str = "",
    ) -> _Outcome:
        """Failed for good: logged at ERROR, with the traceback (only here, not per retry)."""
        self._log.error(
            "queue %s: job %s (type %r, tag %r) failed at attempt %d/%d: %s",
            self.name,
            job.id,
            job.type,
            job.identify_tag,
            job.attempts,
            job.max_attempts,
            reason,
            exc_info=exc,
            extra=self._job_extra(job, wid),
        )
        return _Outcome("failed", error)

    async def _renew(self, ids: list[str]) -> list[str]:
        """Renew the leases of ``ids``; the lost ones join ``_lost``. Returns the ids of active
        jobs whose cancellation was requested."""
        sent = _clock()  # Redis starts the lease at least HEARTBEAT_TIMEOUT from here
        beat = partial(
            self._scripts.heartbeat, self._epoch, self.settings.heartbeat_timeout_ms, ids
        )
        try:
            lost, cancel = await self._net.retry(beat, what="heartbeat")
        except DataLostError:
            lost, cancel = ids, []  # they re-register; the first to do so reports the loss
        self._lost.update(lost)
        for wid in ids:
            if wid in self._sure_until and wid not in self._lost:  # not re-registered meanwhile
                self._sure_until[wid] = sent + self._sure_s
        return cancel

    @property
    def _sure_s(self) -> float:
        """How long after a renewal was sent the lease surely has a heartbeat interval left."""
        s = self.settings
        return (s.heartbeat_timeout_ms - s.heartbeat_interval_ms) / 1000

    def _lease_sure(self, wid: str) -> bool:
        """Whether, as the local clock tells, the lease has a heartbeat interval left."""
        return _clock() < self._sure_until.get(wid, -math.inf) and wid not in self._lost

    async def _confirm_lease(self, wid: str) -> None:
        """Before a run starts, renew a lease that may have lapsed since the run was handed out.
        The run may have waited in a socket while the process was paused or cut off from Redis
        (a wake-up read late, a reply read late): past its lease, the leader has handed its
        jobs back and they may be running elsewhere already. Slots that find their leases
        unsure together (heartbeats stalled) share one renewal of every lease."""
        while not self._lease_sure(wid):
            if wid in self._lost:
                raise LeaseLostError(wid)
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._renew(list(self._worker_ids.values())))
            await asyncio.shield(self._renewal)

    async def _heartbeats(self) -> None:
        interval_s = self.settings.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            ids = list(self._worker_ids.values())
            if not ids:
                continue
            cancel = await self._renew(ids)
            for run in self._running.values():
                for ctx in run.contexts:
                    # A job of a lost worker runs again elsewhere: let its handler know.
                    if ctx.job_id in cancel or ctx.worker_id in self._lost:
                        ctx.cancelled = True
