"""Random sequences of every engine operation, through the fault layer, checked after each step.

One example is one fresh queue: a seeded random generator picks ``steps`` operations (add and
add_bulk, delayed and ``run_at`` adds, deduplication keys, per-tag backpressure, a flood past the
depth where cancel marks ghosts, dispatch, advance with completed / failed / strict and relaxed
retries over runs of several jobs (batches, prefetch) whose tail goes back unstarted, cancel,
pause and resume, reap, register, retire, deregister, requeue and delete of dead letters,
elect / renew / resign with leader changes, stale fences, a term with 10,000 limits, heartbeat,
watch, a worker's crash, a lease moved into the past, Redis losing the queue's data,
time passing), then drains the queue and checks that nothing was left behind. The seed of an
example reproduces it exactly, up to Redis's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from affinity_queue import LeaseLostError, NotLeaderError, QueueSettings, TagBacklogFullError
from affinity_queue.errors import JobNotActiveError
from affinity_queue.keys import tag_id
from affinity_queue.lua import AddOptions, RawJob, Scripts, TermConfig, carried_run, new_token

from ..engine import redis_ms
from ..support import queue_keys
from .check import FINAL, MJob, Model, MWorker, State, check, left_behind, parse, snapshot
from .faults import Failure, Faults, differences

T = TypeVar("T")

TAGS = ("a", "b", "c", "d", "e")
LIMITS = {tag_id("c"): 2}  # one tag may run on two workers at once
WEIGHTS = {tag_id("a"): 3.0, tag_id("c"): 2.0, tag_id("e"): 0.5}  # weighted turns (issue 17)
MAX_BATCH = 3
LEASE_MS = 60_000


class Broken(AssertionError):
    """An invariant failed; the message names the seed, the step and the operations so far."""


@dataclass
class Figures:
    """What the runs did, for the report of a long run."""

    examples: int = 0
    steps: int = 0
    script_calls: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    repeats_checked: Counter[str] = field(default_factory=Counter)

    def add(self, h: Harness) -> None:
        self.examples += 1
        self.steps += sum(h.ops.values())
        self.ops.update(h.ops)
        self.faults.update(h.faults.injected)
        self.script_calls += sum(h.faults.injected.values())
        self.repeats_checked.update(h.faults.repeats_checked)


class Harness:
    """One example: the scripts of one fresh queue, the reference model, the fault layer."""

    def __init__(
        self, redis: aioredis.Redis, settings: QueueSettings, seed: int, fault_rate: float
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.seed = seed
        self.rng = random.Random(seed)
        self.scripts = Scripts(redis, settings.keys, settings.pending_queue_name)
        self.model = Model(MAX_BATCH, 1, LIMITS)
        self.faults = Faults(self.rng, redis, self.snapshot, fault_rate, self.leader_acts)
        self.config = TermConfig(max_batch=MAX_BATCH, limits=LIMITS, weights=WEIGHTS)
        self.leader_token = ""
        self.fence = 0
        self.leads = False  # our last elect won and nothing ended the term since
        self.old_fences: list[int] = []
        self.epoch = "epoch-" + new_token()
        self.serial = 0
        self.dead: list[str] = []  # crashed workers: Redis keeps their leases
        self.ops: Counter[str] = Counter()
        self.trace: list[str] = []
        self.broken: list[str] = []
        self.state: State | None = None

    async def snapshot(self) -> dict[str, Any]:
        return await snapshot(self.redis, self.settings)

    async def read(self) -> State:
        return parse(await self.snapshot(), self.settings)

    def fail(self, rule: str) -> None:
        self.broken.append(rule)

    async def call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        return await self.faults.call(name, call)

    # ----- producers -----------------------------------------------------------------------

    async def op_add(self) -> None:
        rng = self.rng
        tags = rng.sample(TAGS, rng.choice((1, 1, 2, 3)))
        entries = [(t, str(i)) for t in tags for i in range(rng.randint(1, 4))]
        rng.shuffle(entries)
        now = await redis_ms(self.redis)
        delay = rng.choice((0, 0, 0, 0, 5, 30))
        run_at = rng.choice((0,) * 8 + (now + 25, now - 1000))
        dedupe = ""
        if len(entries) == 1 and rng.random() < 0.3:
            dedupe = rng.choice(("k1", "k2")).encode().hex()
        limit = rng.choice((0, 0, 0, 3, 6))
        weight = rng.choice((None, None, 0.5, 3.0))  # per call: the tasks' tag while they lead it
        options = AddOptions(0, 0, 0, delay, run_at, dedupe, 200, limit, weight)
        await self.add(entries, options)

    async def op_flood(self) -> None:
        """A tag longer than cancel searches (1,000): cancels deep in it become ghosts."""
        n = 1000 + self.rng.randint(1, 20)
        await self.add([("e", str(i)) for i in range(n)], AddOptions())

    async def add(self, entries: list[tuple[str, str]], options: AddOptions) -> None:
        # Delayed jobs do not count against the limit when add checks it, but they join the tag
        # when due: a dispatch (a late retry's, say) may bring them in before the check below.
        delayed_before: dict[str, int] = {}
        if options.max_pending_per_tag:
            for member, _ in (await self.read()).delayed:
                job = self.model.jobs.get(member.lstrip("0"))
                if job is not None:
                    delayed_before[job.tid] = delayed_before.get(job.tid, 0) + 1
        before = self.state or await self.read()
        added_all = await self.add_chunks(entries, options)
        # add places what dispatch would (an idle worker, a bound one with room): same rules.
        self.check_bindings(before, await self.read(), await redis_ms(self.redis))
        if added_all and options.max_pending_per_tag:
            tids = {tag_id(t) for t, _ in entries}
            await self.check_backlog(tids, options.max_pending_per_tag, delayed_before)

    async def add_chunks(self, entries: list[tuple[str, str]], options: AddOptions) -> bool:
        """Add in calls of at most 1,000; False when one failed or was deduplicated."""
        token = new_token()
        for start in range(0, len(entries), 1000):
            chunk = [("t", t, tag_id(t), p) for t, p in entries[start : start + 1000]]
            try:
                added = await self.call(
                    "add", lambda c=chunk, t=token: self.scripts.add(t, c, options)
                )
            except (*Failure, TagBacklogFullError):
                return False
            if added.deduplicated:
                if added.ids[0] not in self.model.jobs:
                    self.fail(f"deduplication answered {added.ids[0]}, a job nobody added")
                return False
            if len(added.ids) != len(chunk):
                self.fail(f"add of {len(chunk)} answered {len(added.ids)} ids")
            for job_id, entry in zip(added.ids, chunk, strict=False):
                if job_id in self.model.jobs:
                    self.fail(f"add answered {job_id}, the id of an earlier job")
                self.model.jobs[job_id] = MJob(job_id, entry[2], added.due_ms)
            token = new_token()  # the next chunk is another call
        return True

    async def check_backlog(self, tids: set[str], limit: int, delayed: dict[str, int]) -> None:
        state = await self.read()
        for tid in tids:
            bound = dict(state.single.get(f"bound:{tid}", []))
            waiting = len(state.tags.get(tid, [])) + sum(len(state.wq.get(w, [])) for w in bound)
            if waiting > limit + delayed.get(tid, 0):
                self.fail(f"add accepted with {waiting} jobs of {tid} waiting (limit {limit})")

    async def op_cancel(self) -> None:
        job = self.pick_job()
        job_id = job.id if job else "1-0000000000000000"
        token = new_token()
        try:
            reply = await self.call("cancel", lambda: self.scripts.cancel(token, job_id))
        except Failure:
            return
        if job is None:
            if reply != "unknown":
                self.fail(f"cancel of a job nobody added answered {reply}")
            return
        match reply:
            case "cancelled":
                if job.state != "waiting":
                    self.fail(f"cancel withdrew {job.id}, which is {job.state}")
                job.state = "cancelled"
            case "requested":
                if job.state not in ("running", "waiting"):
                    self.fail(f"cancel flagged {job.id}, which is {job.state}")
                job.cancel_requested = True
            case "finished":
                if job.state == "waiting" and job.cancel_requested:
                    job.state = "cancelled"  # handed back after a crash: it ended cancelled
                elif job.state not in FINAL:
                    self.fail(f"cancel says {job.id} finished; it is {job.state}")
            case _:
                if job.state != "deleted":
                    self.fail(f"cancel says {job.id} is unknown; it is {job.state}")

    async def op_watch(self) -> None:
        job = self.pick_job()
        job_id = job.id if job else "1-0000000000000000"
        try:
            status = await self.call("watch", lambda: self.scripts.watch(job_id, 1000))
        except Failure:
            return
        known = "" if job is None or job.state == "deleted" else job.state
        if status is not None and status != known and not (job and job.cancel_requested):
            self.fail(f"watch says {job_id} is {status!r}; it is {known!r}")

    async def op_pause(self) -> None:
        on = self.rng.random() < 0.5
        tid = self.rng.choice(("", *(tag_id(t) for t in TAGS)))
        token = new_token()
        with contextlib.suppress(Failure):
            await self.call("pause", lambda: self.scripts.pause(token, on, tid))

    async def op_dead_letter(self) -> None:
        failed = [j for j in self.model.jobs.values() if j.state == "failed"]
        job = self.rng.choice(failed) if failed else self.pick_job()
        if job is None:
            return
        token = new_token()
        requeue = self.rng.random() < 0.6
        script = self.scripts.requeue_failed if requeue else self.scripts.delete_failed
        name = "requeue_failed" if requeue else "delete_failed"
        try:
            done = await self.call(name, lambda: script(token, job.id))
        except Failure:
            return
        if done != (job.state == "failed"):
            self.fail(f"{name} of {job.id} ({job.state}) answered {done}")
        if done and requeue:
            job.state, job.may_restart, job.attempts = "waiting", True, 0
        elif done:
            job.state = "deleted"

    # ----- the leader ----------------------------------------------------------------------

    async def elect(self, token: str) -> None:
        try:
            fence = await self.call(
                "elect", lambda: self.scripts.elect(token, LEASE_MS, "n", "h", 1, self.config)
            )
        except Failure:
            return
        if fence and self.fence:
            self.old_fences.append(self.fence)
        if fence:
            self.leader_token, self.fence, self.leads = token, fence, True

    async def op_leader(self) -> None:
        """Re-elect (a new term), hand over by resigning, or let the lease lapse."""
        match self.rng.choice(("again", "resign", "lapse", "renew")):
            case "again":
                await self.elect(self.leader_token)
            case "resign":
                token = self.leader_token
                try:
                    await self.call("resign", lambda: self.scripts.resign(token))
                except Failure:
                    return
                self.leads = False
                await self.elect(new_token())
            case "lapse":
                await self.redis.delete(self.settings.keys.leader)
                self.leads = False
                await self.elect(new_token())
            case _:
                token = self.leader_token
                try:
                    held = await self.call("renew", lambda: self.scripts.renew(token, LEASE_MS))
                except Failure:
                    return
                if self.leads and not held:
                    self.fail("the leader's renew was refused")

    async def op_big_config(self) -> None:
        """A term with 10,000 per-tag limits (for tags nobody uses): the largest elect input. A
        script that fails must have written nothing."""
        limits = {f"ff{i:05d}": 2 for i in range(10_000)} | LIMITS
        self.config = TermConfig(max_batch=MAX_BATCH, limits=limits, weights=WEIGHTS)
        before = await self.snapshot()
        try:
            await self.elect(self.leader_token or new_token())
        except ResponseError as e:
            if diff := differences(before, await self.snapshot()):
                self.fail(f"elect failed ({e}) after writing {sorted(diff)}")
            else:
                self.fail(f"elect failed: {e}")

    async def leader_acts(self) -> None:
        """The leader places work meanwhile (between a call and its late retry)."""
        with contextlib.suppress(NotLeaderError):
            await self.scripts.dispatch(self.fence, 1000)

    async def op_stale_fence(self) -> None:
        """A deposed leader's dispatch or reap must be refused and change nothing."""
        if not self.old_fences:
            return
        fence = self.rng.choice(self.old_fences)
        before = await self.snapshot()
        try:
            if self.rng.random() < 0.5:
                await self.scripts.dispatch(fence, 1000)
            else:
                await self.scripts.reap(fence, 100)
            self.fail(f"a stale fence {fence} (now {self.fence}) was obeyed")
        except NotLeaderError:
            pass
        if diff := differences(before, await self.snapshot()):
            self.fail(f"a refused stale fence changed {diff}")

    async def op_dispatch(self) -> None:
        before = self.state or await self.read()
        budget = self.rng.choice((1000, 1000, 1000, 2, 1))
        try:
            await self.call("dispatch", lambda: self.scripts.dispatch(self.fence, budget))
        except Failure:
            return
        except NotLeaderError:
            await self.not_leader("dispatch")
            return
        self.check_bindings(before, await self.read(), await redis_ms(self.redis))

    def check_bindings(self, before: State, after: State, now: int) -> None:
        """No worker whose lease has passed is bound; and a worker that has run MAX_BATCH_SIZE
        jobs of a tag in a row is bound to that tag again only when no other tag is placeable."""
        new_tags = {m for m, _ in after.single.get("ready:new", [])}
        leases = dict(after.single.get("workers", []))
        for wid, s in after.ws.items():
            tid = s.get("tid")
            if not tid or before.ws.get(wid, {}).get("tid") == tid:
                continue  # not bound by this dispatch
            if leases.get(wid, 0) < now:
                self.fail(f"{wid} was bound to {tid}; its lease had expired")
            w = self.model.workers.get(wid)
            if w and w.streak_tid == tid and w.streak >= MAX_BATCH:
                if new_tags - {tid}:
                    self.fail(
                        f"{wid} ran {w.streak} of {tid} in a row and was bound to it again "
                        f"while {sorted(new_tags - {tid})} could take a worker"
                    )
                w.streak = 0  # no other tag was placeable: a new batch of the same tag begins

    async def op_reap(self) -> None:
        budget = self.rng.randint(1, 5)
        try:
            await self.call("reap", lambda: self.scripts.reap(self.fence, budget))
        except Failure:
            pass
        except NotLeaderError:
            await self.not_leader("reap")

    async def not_leader(self, script: str) -> None:
        """Refused for a stale fence: right when our term ended, or when a repeat of our elect
        (a duplicated call whose first reply we got) started a newer one."""
        leader = await self.redis.hgetall(self.settings.keys.leader)
        if self.leads and leader.get("fence") == str(self.fence):
            self.fail(f"{script} refused the fence of the leader's current term")
        await self.elect(self.leader_token or new_token())

    # ----- workers -------------------------------------------------------------------------

    async def op_register(self) -> None:
        self.serial += 1
        wid = f"w{self.serial}"
        try:
            epoch = await self.call(
                "register", lambda: self.scripts.register(wid, LEASE_MS, "h", 1, self.epoch)
            )
        except Failure:
            return
        self.epoch = epoch
        self.model.workers[wid] = MWorker(wid)

    def pick_worker(self, *, leaving: bool = False) -> MWorker | None:
        ws = [w for w in self.model.workers.values() if w.leaving == leaving]
        return self.rng.choice(ws) if ws else None

    def pick_job(self) -> MJob | None:
        if not self.model.jobs or self.rng.random() < 0.05:
            return None
        return self.model.jobs[self.rng.choice(list(self.model.jobs))]

    def lease_lost(self, w: MWorker, script: str) -> None:
        if not w.stale and not w.leaving:
            self.fail(f"{script} said the live worker {w.id} lost its lease")
        self.model.interrupt(w)
        del self.model.workers[w.id]  # its process registers a new worker

    async def op_work(self) -> None:
        """One worker records its active run (if any) and takes the next: a random prefix of
        the run ran (completed, the last one maybe failed or retried), the rest goes back
        unstarted; the next run is one job, a prefetch of up to 3, or a batch of up to 3."""
        w = self.pick_worker()
        if w is None:
            return
        before = self.state or await self.read()
        run = list(w.run)
        ran = self.rng.randint(1, len(run)) if run and self.rng.random() < 0.9 else len(run)
        if run and self.rng.random() < 0.1:
            ran = 0  # stopped before its first job
        outcomes = ["completed"] * ran
        delay, order = self.rng.choice((0, 0, 5, 30)), self.rng.choice(("strict", "relaxed"))
        if ran:
            outcomes[-1] = self.rng.choice(("completed",) * 6 + ("failed",) + ("retry",) * 3)
        done = [
            (job.id, o, '{"r": 1}', "", "", job.attempts)
            for job, o in zip(run, outcomes, strict=False)
        ]
        done += [(job.id, "", "", "", "", job.attempts) for job in run[ran:]]
        take = 0 if w.retiring else self.rng.choice((1, 1, 1, 2, 3))
        sizes = {"t": self.rng.randint(1, 3)} if self.rng.random() < 0.3 else {}

        async def advance() -> list[RawJob]:
            try:
                return await self.scripts.advance_run(
                    w.id, done, take, batch_sizes=sizes, retry_delay_ms=delay, retry_order=order
                )
            except JobNotActiveError:  # a retry whose first call landed (as worker.py does)
                return await self.scripts.advance_run(w.id, [], take, batch_sizes=sizes)

        try:
            started = await self.call("advance", advance)
        except Failure:
            return
        except LeaseLostError:
            self.lease_lost(w, "advance")
            return
        if w.stale:
            self.fail(f"advance worked for {w.id}, whose lease expired")
        if ran or not take:  # else nothing changed: the same run comes back
            for job in run[ran:]:
                self.model.unstart(w, job)
        for job, outcome in zip(run, outcomes, strict=False):
            w.run.remove(job)
            job.worker = ""
            if outcome == "retry" and not job.cancel_requested:
                job.state, job.may_restart = "waiting", True
            elif outcome == "completed":
                job.state = "completed"
            else:
                job.state = "cancelled" if job.cancel_requested else outcome
        most = sizes.get("t", take)
        if len(started) > max(most, 1, 0 if ran else len(run)):
            self.fail(f"advance started {len(started)} jobs, asked for {take} (batch {sizes})")
        # A worker that freed may have been bound again in the call (its next run is the
        # reply), and other idle workers too (their wake-ups): the bindings by dispatch's rules
        # (checked on the streaks before these runs), the runs in the order the call started
        # them.
        self.check_bindings(before, await self.read(), await redis_ms(self.redis))
        await self.deliver_wake_ups((w, started))

    def started(self, w: MWorker, run: list[RawJob]) -> None:
        for taken in run:
            self.broken += self.model.start(w, taken.id)
            mj = self.model.jobs.get(taken.id)
            if mj is not None and taken.attempts != mj.attempts:
                self.fail(f"{mj.id} started as attempt {taken.attempts}, its {mj.attempts}th")

    async def deliver_wake_ups(self, taken: tuple[MWorker, list[RawJob]] | None = None) -> None:
        """Each worker reads its wake-ups after each step, as its idle wait does: a script that
        bound an idle worker (dispatch, add, advance) started its run, and the wake-up carries
        it. One in five is lost in transit: the worker's idle check then finds the run active,
        and advance delivers it again. Runs are recorded in the order they were started (by
        their first job's order number: a tag's jobs leave its list oldest first), whichever
        worker reads first; ``taken`` is a run an advance of this step returned."""
        runs: list[tuple[MWorker, list[RawJob]]] = [taken] if taken and taken[1] else []
        for w in list(self.model.workers.values()):
            key = self.settings.keys.worker_wake(w.id)
            while (wake_up := await self.redis.lpop(key)) is not None:
                run = carried_run(wake_up)
                if run and not w.leaving and self.rng.random() < 0.2:
                    try:
                        again = await self.scripts.advance_run(w.id, [], 1)
                    except LeaseLostError:
                        self.lease_lost(w, "advance")
                        break
                    if [j.id for j in again] != [j.id for j in run]:
                        self.fail(f"{w.id} lost the wake-up of {run}; advance gave {again}")
                    run = again
                if run:
                    runs.append((w, run))
        for wid in self.dead:  # bound while its lease lasted: the run counts as started
            while wake_up := await self.redis.lpop(self.settings.keys.worker_wake(wid)):
                if run := carried_run(wake_up):
                    runs.append((MWorker(wid, leaving=True), run))
        for w, run in sorted(runs, key=lambda r: int(r[1][0].id.partition("-")[0])):
            self.started(w, run)
            if w.leaving:  # it never runs it: its deregister, or the reaper, hands it back
                self.model.interrupt(w)

    async def op_retire(self) -> None:
        w = self.pick_worker()
        if w is None:
            return
        budget = self.rng.randint(1, 3)
        try:
            await self.call("retire", lambda: self.scripts.retire(w.id, budget))
        except Failure:
            return
        except LeaseLostError:
            self.lease_lost(w, "retire")
            return
        w.retiring = True

    async def op_deregister(self) -> None:
        """A stopping worker leaves (with its active job, if any: the grace period ran out)."""
        w = self.pick_worker(leaving=True) or self.pick_worker()
        if w is not None:
            await self.deregister(w, self.rng.randint(1, 3))

    async def deregister(self, w: MWorker, budget: int) -> bool:
        w.leaving = True  # it runs nothing more: its active job, if any, goes back
        self.model.interrupt(w)
        try:
            _, gone, _ = await self.call(
                "deregister", lambda: self.scripts.deregister(w.id, budget)
            )
        except Failure:
            return False
        except LeaseLostError:  # gone already: a repeat after a lost reply, or the reaper
            gone = True
        if gone:
            self.model.interrupt(w)
            del self.model.workers[w.id]
            if await self.redis.zscore(self.settings.keys.workers, w.id) is not None:
                self.fail(f"deregister said {w.id} is gone but its lease is still there")
        return bool(gone)

    async def op_heartbeat(self) -> None:
        ws = list(self.model.workers.values())
        if not ws:
            return
        ids = [w.id for w in ws]
        try:
            lost, cancel = await self.call(
                "heartbeat", lambda: self.scripts.heartbeat(self.epoch, LEASE_MS, ids)
            )
        except Failure:
            return
        for w in ws:  # a leaving worker may be gone already (a repeated deregister finished)
            if w.stale != (w.id in lost) and not (w.leaving and w.id in lost):
                self.fail(f"heartbeat: {w.id} stale={w.stale} but lost={w.id in lost}")
            if w.id in lost:
                self.lease_lost(w, "heartbeat")
        # A leaving worker's run is forgotten by the model (interrupted) but may still be
        # active in Redis until its deregister lands: any cancel-requested job may be flagged.
        flagged = {job.id for job in self.model.jobs.values() if job.cancel_requested}
        if set(cancel) - flagged:
            self.fail(f"heartbeat flagged {set(cancel) - flagged}, not cancel-requested")

    async def op_crash(self) -> None:
        """The process dies: the model forgets the worker, Redis keeps its lease until expiry."""
        w = self.pick_worker() or self.pick_worker(leaving=True)
        if w is not None:
            self.model.interrupt(w)
            del self.model.workers[w.id]
            self.dead.append(w.id)

    async def op_expire(self) -> None:
        """Time passes a lease: a crashed worker's, or a live one's (a process paused too long)."""
        now = await redis_ms(self.redis)
        if self.dead and self.rng.random() < 0.6:
            await self.redis.zadd(self.settings.keys.workers, {self.dead.pop(): now - 1}, xx=True)
            return
        w = self.pick_worker() or self.pick_worker(leaving=True)
        if w is not None:
            await self.redis.zadd(self.settings.keys.workers, {w.id: now - 1}, xx=True)
            w.stale = True
            self.model.interrupt(w)

    async def op_data_loss(self) -> None:
        """Redis restarts without its data (no AOF): every key of the queue is gone; processes
        learn it from the epoch (heartbeat's DATA_LOST) and register again."""
        if keys := await queue_keys(self.redis, self.settings):
            await self.redis.delete(*keys)
        for job in self.model.jobs.values():
            job.state = "deleted"
        self.model.workers.clear()
        self.dead.clear()
        self.leads = False
        self.epoch = "epoch-" + new_token()

    async def op_wait(self) -> None:
        """Real time passes, so delays and retry holds come due (Redis's clock decides)."""
        await asyncio.sleep(self.rng.choice((0.005, 0.02, 0.04)))

    # ----- running an example --------------------------------------------------------------

    OPS: tuple[tuple[str, int], ...] = (
        ("add", 14), ("dispatch", 14), ("work", 30), ("cancel", 5), ("pause", 3),
        ("reap", 3), ("register", 4), ("retire", 2), ("deregister", 2), ("dead_letter", 3),
        ("leader", 3), ("stale_fence", 2), ("heartbeat", 3), ("crash", 2), ("expire", 3),
        ("wait", 3), ("watch", 2), ("data_loss", 1), ("flood", 0), ("big_config", 0),
    )  # fmt: skip

    async def step(self, name: str) -> None:
        self.ops[name] += 1
        self.trace.append(name)
        await getattr(self, f"op_{name}")()
        await self.deliver_wake_ups()  # a dispatch (this step's, or a late retry's) bound them
        self.broken += self.faults.problems
        self.faults.problems.clear()
        self.state = await self.read()
        self.broken += check(self.model, self.state)
        self.model.settle(self.state)
        if self.broken:
            raise Broken(self.report())

    def report(self) -> str:
        return (
            f"seed {self.seed}, step {len(self.trace)}: "
            + "; ".join(dict.fromkeys(self.broken))
            + f"\noperations: {' '.join(self.trace)}\nreproduce: AQ_MODEL_SEED={self.seed} "
            "AQ_MODEL_EXAMPLES=1 .venv/bin/pytest -q tests/model"
        )

    async def run(self, steps: int, flood: bool) -> None:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        if flood:  # rare and slow: the big inputs
            weights[names.index("flood")] = 1
            weights[names.index("big_config")] = 1
        await self.elect(new_token())
        for _ in range(2):
            await self.op_register()
        for _ in range(steps):
            await self.step(self.rng.choices(names, weights)[0])
        await self.drain()

    async def drain(self) -> None:
        """Stop the faults, finish every job, let every worker leave: nothing may be left."""
        self.faults.rate, self.faults.window = 0.0, None
        keys = self.settings.keys
        await self.scripts.pause(new_token(), False)
        for tid in await self.redis.smembers(keys.queue_prefix + "paused-tags"):
            await self.scripts.pause(new_token(), False, tid)
        await self.elect(self.leader_token or new_token())
        now = await redis_ms(self.redis)
        for wid in self.dead:
            await self.redis.zadd(keys.workers, {wid: now - 1}, xx=True)
        for w in list(self.model.workers.values()):
            if w.stale:
                self.lease_lost(w, "drain")
            elif w.leaving or w.retiring:
                await self.finish_and_leave(w)
        for _ in range(2):
            await self.op_register()
        deadline = time.monotonic() + 60
        while True:  # unchecked rounds (a flood takes hundreds): the end state is checked
            # A flood's rounds may outlast the term's lease: keep it.
            if not await self.scripts.renew(self.leader_token, LEASE_MS):
                raise Broken(f"seed {self.seed}: the leader lost its lease in the drain")
            reaped = 0
            while True:
                _, jobs, more, _ = await self.scripts.reap(self.fence, 1000)
                reaped += jobs
                if not more:
                    break
            if reaped:  # a reaped run's job whose cancellation was requested ended cancelled:
                self.model.settle(await self.read())  # learn it before anything of its tag starts
            await self.scripts.dispatch(self.fence, 1000)
            await self.deliver_wake_ups()
            for w in list(self.model.workers.values()):
                await self.complete(w)
            if await self.drained():
                break
            if time.monotonic() > deadline:
                raise Broken(f"seed {self.seed}: the queue did not drain")
            await asyncio.sleep(0.002)  # a delay or a retry's hold may still have to come due
        for w in list(self.model.workers.values()):
            await self.finish_and_leave(w)
        await self.scripts.resign(self.leader_token)
        state = await self.read()
        self.broken += check(self.model, state)
        self.model.settle(state)
        self.broken += [f"left behind after the drain: {k}" for k in left_behind(state)]
        self.broken += [f"{j.id} never finished ({j.state})" for j in self.model.jobs.values()
                        if j.state not in (*FINAL, "deleted")]  # fmt: skip
        if self.broken:
            raise Broken(self.report())

    async def drained(self) -> bool:
        k = self.settings.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.counts, "pending", "delayed", "assigned", "active")
            for name in ("held", "ready:bound", "ready:new"):
                pipe.zcard(k.queue_prefix + name)
            counts, *sizes = await pipe.execute()
        return not any(int(c or 0) for c in counts) and not any(sizes)

    async def complete(self, w: MWorker) -> None:
        """Finish the worker's job as completed and take the next; until its queue is empty."""
        for _ in range(MAX_BATCH + 1):
            done = [(job.id, "completed", "1") for job in w.run]
            started = await self.scripts.advance_run(w.id, done, 0 if w.retiring else 1)
            for job in w.run:
                job.worker, job.state = "", "completed"
            w.run = []
            if not started:
                return
            for taken in started:
                self.broken += self.model.start(w, taken.id)

    async def finish_and_leave(self, w: MWorker) -> None:
        w.retiring = True
        try:
            await self.complete(w)
        except LeaseLostError:
            if not w.leaving:
                raise
            # Gone already: a deregister slice run twice (the fault layer's "twice") finished it.
            self.model.interrupt(w)
            del self.model.workers[w.id]
            return
        while not await self.deregister(w, 1000):
            pass
