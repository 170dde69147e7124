"""The reference model's view of the queue and the invariants the Redis state must keep.

``read`` takes one snapshot of every key of the queue; ``Model`` is what the harness knows from the
replies it got (jobs accepted, who runs what, what finished how); ``check`` compares the two after
every step and returns the broken rules, each as a sentence.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from affinity_queue import QueueSettings

from ..support import order_of, queue_keys

FINAL = ("completed", "failed", "cancelled")
WAITING = ("pending", "assigned")
"""Statuses the tag index counts: waiting to start."""


async def snapshot(redis: aioredis.Redis, settings: QueueSettings) -> dict[str, Any]:
    """Every key of the queue and its content (the pipelined twin of support.snapshot: the model
    reads the whole queue after every step)."""
    keys = sorted(await queue_keys(redis, settings))
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        kinds = await pipe.execute()
        for key, kind in zip(keys, kinds, strict=True):
            match kind:
                case "string":
                    pipe.get(key)
                case "hash":
                    pipe.hgetall(key)
                case "list":
                    pipe.lrange(key, 0, -1)
                case "zset":
                    pipe.zrange(key, 0, -1, withscores=True)
                case "set":
                    pipe.smembers(key)
                case _:  # "none": it expired since the SCAN
                    pipe.type(key)
        values = await pipe.execute()
    out: dict[str, Any] = {}
    for key, kind, value in zip(keys, kinds, values, strict=True):
        if kind == "none" or value is None:
            continue
        if kind == "set":
            value = sorted(value)
        elif kind == "zset":
            value = [(m, s) for m, s in value]
        out[key] = value
    return out


@dataclass
class MJob:
    id: str
    tid: str
    due: int  # 0 when due at once; jobs of one tag with one due time start in their order
    state: str = "waiting"  # waiting | running | completed | failed | cancelled | deleted
    worker: str = ""  # the model worker running it (state running)
    starts: int = 0
    attempts: int = 0  # starts since it was added or requeued: Redis counts the same
    may_restart: bool = False  # retried, interrupted or requeued: another start is allowed
    cancel_requested: bool = False


@dataclass
class MWorker:
    id: str
    run: list[MJob] = field(default_factory=list)  # its active jobs, in order (a batch, a run)
    stale: bool = False  # its lease was moved past: every call must be refused
    retiring: bool = False  # retire ran: it takes nothing new
    leaving: bool = False  # deregister began: it only calls deregister again
    streak_tid: str = ""  # the tag of its last starts, and how many in a row
    streak: int = 0


@dataclass
class Model:
    max_batch: int
    concurrency: int
    limits: dict[str, int]  # tag id -> limit
    jobs: dict[str, MJob] = field(default_factory=dict)
    workers: dict[str, MWorker] = field(default_factory=dict)  # live processes' workers

    def limit(self, tid: str) -> int:
        return self.limits.get(tid, self.concurrency)

    def interrupt(self, w: MWorker) -> None:
        """The worker's process is gone or paused past its lease: its job may run again."""
        for job in w.run:
            job.state, job.worker, job.may_restart = "waiting", "", True
        w.run = []

    def settle(self, state: State) -> None:
        """A job whose cancellation was requested while it ran ends cancelled when its
        interrupted run is handed back (requeue_front): learn it from Redis."""
        for job in self.jobs.values():
            status = state.jobs.get(job.id, {}).get("status")
            if job.state == "waiting" and job.cancel_requested and status == "cancelled":
                job.state = "cancelled"

    def start(self, w: MWorker, job_id: str) -> list[str]:
        """Record that ``w`` started ``job_id``; returns the rules the start breaks."""
        job = self.jobs.get(job_id)
        if job is None:
            return [f"{w.id} started {job_id}, a job nobody added"]
        if job in w.run:
            return []  # the same start delivered again (a retry after a lost reply)
        broken = []
        if w.stale:
            broken.append(f"{w.id} started {job_id} on an expired lease")
        if job.state in FINAL or job.state == "deleted":
            broken.append(f"{w.id} started {job_id}, already {job.state}")
        elif job.state == "running":
            broken.append(f"{w.id} started {job_id} while {job.worker} runs it")
        elif job.starts and not job.may_restart:
            broken.append(f"{w.id} started {job_id} again with no retry or interruption")
        if job.cancel_requested:
            broken.append(f"{w.id} started {job_id} after its cancellation was requested")
        if job.starts == 0 and self.limit(job.tid) == 1:
            for other in self.jobs.values():
                if (
                    other.tid == job.tid
                    and other.due == job.due
                    and order_of(other.id) < order_of(job.id)
                    and other.starts == 0
                    and other.state == "waiting"
                ):
                    broken.append(f"{job_id} started before {other.id} of its tag (order)")
                    break
        running = sum(
            1
            for o in self.workers.values()
            if o is not w and o.run and o.run[0].tid == job.tid and not o.stale
        )
        if running + 1 > self.limit(job.tid):
            broken.append(f"{job_id}: tag {job.tid} would run on {running + 1} live workers")
        if w.streak_tid == job.tid:
            w.streak += 1
        else:
            w.streak_tid, w.streak = job.tid, 1
        job.state, job.worker, job.may_restart = "running", w.id, False
        job.starts += 1
        job.attempts += 1
        w.run.append(job)
        return broken

    def unstart(self, w: MWorker, job: MJob) -> None:
        """``advance`` sent a job of the worker's run back unstarted (not run): as if never
        taken, unless its cancellation was requested (then it ended cancelled)."""
        w.run.remove(job)
        job.worker = ""
        if job.cancel_requested:
            job.state = "cancelled"
            return
        job.state = "waiting"
        job.starts -= 1
        job.attempts -= 1
        job.may_restart = job.starts > 0  # as before this start: an earlier one had ended
        if w.streak_tid == job.tid:
            w.streak -= 1


@dataclass
class State:
    """The Redis state, parsed."""

    jobs: dict[str, dict[str, str]]
    tags: dict[str, list[str]]
    delayed: list[tuple[str, float]]
    wq: dict[str, list[str]]
    ws: dict[str, dict[str, str]]
    single: dict[str, Any]  # "{q}:<suffix>" keys without an id, by suffix
    raw: dict[str, Any]


def parse(snap: dict[str, Any], settings: QueueSettings) -> State:
    k = settings.keys
    jobs: dict[str, dict[str, str]] = {}
    tags: dict[str, list[str]] = {}
    wq: dict[str, list[str]] = {}
    ws: dict[str, dict[str, str]] = {}
    single: dict[str, Any] = {}
    for key, value in snap.items():
        if key.startswith(k.job_prefix):
            jobs[key[len(k.job_prefix) :]] = value
        elif key.startswith(k.tag_prefix):
            tags[key[len(k.tag_prefix) :]] = value
        elif key.startswith(k.worker_queue_prefix_key):
            wq[key[len(k.worker_queue_prefix_key) :]] = value
        elif key.startswith(k.worker_wake_prefix):
            pass
        elif key.startswith(k.worker_state_prefix_key):
            ws[key[len(k.worker_state_prefix_key) :]] = value
        elif key.startswith(k.queue_prefix):
            single[key[len(k.queue_prefix) :]] = value
    return State(jobs, tags, single.get("delayed", []), wq, ws, single, snap)


def _zset(state: State, name: str) -> dict[str, float]:
    return dict(state.single.get(name, []))


def check(model: Model, state: State) -> list[str]:
    """Every rule the state breaks, given what the model knows."""
    broken: list[str] = []
    ghosts = set(state.single.get("ghosts", []))
    where: dict[str, list[str]] = {}  # job id -> the places that hold it
    for tid, ids in state.tags.items():
        for i in ids:
            if i not in ghosts:  # cancelled deep in the list: dispatch drops it at the head
                where.setdefault(i, []).append(f"tag:{tid}")
    for member, _ in state.delayed:
        where.setdefault(member.lstrip("0"), []).append("delayed")
    for w, ids in state.wq.items():
        for i in ids:
            where.setdefault(i, []).append(f"wq:{w}")
    for w, s in state.ws.items():
        for i in s.get("active", "").split():
            where.setdefault(i, []).append(f"active:{w}")

    for i in where.keys() - model.jobs.keys():
        broken.append(f"{i} is in {where[i]} but nobody added it")
    for job in model.jobs.values():
        rec = state.jobs.get(job.id)
        places = where.get(job.id, [])
        if job.state == "deleted":
            if rec or places:
                broken.append(f"{job.id} was deleted but is still {rec} in {places}")
            continue
        if rec is None:
            broken.append(f"{job.id} ({job.state}) lost: no record")
            continue
        status = rec.get("status")
        if len(places) > 1:
            broken.append(f"{job.id} is in {places} at once")
        expected = {
            "pending": [f"tag:{rec.get('tid')}"],
            "delayed": ["delayed"],
            "assigned": [f"wq:{rec.get('worker')}"],
            "active": [f"active:{rec.get('worker')}"],
        }.get(status or "", [])
        if places != expected:
            broken.append(f"{job.id} has status {status} but is in {places}")
        if job.state in FINAL:
            if status != job.state:
                broken.append(f"{job.id} finished {job.state} but Redis says {status}")
        elif job.state == "running":
            if status != "active" or rec.get("worker") != job.worker:
                broken.append(f"{job.id} runs on {job.worker} but Redis says {status} {rec}")
        elif status == "active":
            w = model.workers.get(rec.get("worker", ""))
            if w is not None and not w.stale and not w.leaving:
                broken.append(f"{job.id} is active on live {w.id}, which does not run it")
        elif status in FINAL and not (status == "cancelled" and job.cancel_requested):
            broken.append(f"{job.id} is {status} though nobody finished it")
    for w in model.workers.values():
        s = state.ws.get(w.id)
        if not w.stale and not w.leaving and s is None:  # a repeated deregister may finish
            broken.append(f"live worker {w.id} has no state in Redis")
        running = " ".join(job.id for job in w.run)
        if not w.stale and not w.leaving and s is not None and s.get("active", "") != running:
            broken.append(f"{w.id} runs {running!r}, Redis: {s.get('active')!r}")

    # Counters equal what the lists hold (ghosts still sit in tag lists until dispatch drops them).
    counts = state.single.get("counts", {})
    held_pending = sum(len(ids) for ids in state.tags.values()) - sum(
        1 for ids in state.tags.values() for i in ids if i in ghosts
    )
    actual = {
        "pending": held_pending,
        "delayed": len(state.delayed),
        "assigned": sum(len(ids) for ids in state.wq.values()),
        "active": sum(len(s.get("active", "").split()) for s in state.ws.values()),
    }
    for name, n in actual.items():
        if int(counts.get(name, 0)) != n:
            broken.append(f"counts {name} = {counts.get(name, 0)}, the lists hold {n}")

    # Exclusivity in Redis: no tag bound to, or active on, more workers than its limit.
    active_per_tag: Counter[str] = Counter(
        state.jobs.get(s["active"].split()[0], {}).get("tid", "?")
        for s in state.ws.values()
        if s.get("active")
    )
    for w, s in state.ws.items():
        if len({state.jobs.get(i, {}).get("tid") for i in s.get("active", "").split()}) > 1:
            broken.append(f"{w}'s active run {s['active']} mixes tags")
    for tid, n in active_per_tag.items():
        if n > model.limit(tid):
            broken.append(f"tag {tid} active on {n} workers (limit {model.limit(tid)})")
    bound = {
        key[len("bound:") :]: dict(v) for key, v in state.single.items() if key.startswith("bound:")
    }
    for tid, members in bound.items():
        if len(members) > model.limit(tid):
            broken.append(f"tag {tid} bound to {len(members)} workers")

    for tid, members in bound.items():
        for w in members:
            s = state.ws.get(w, {})
            if s.get("status") != "running" or s.get("tid") != tid:
                broken.append(f"{w} is bound to {tid} but its state is {s}")
    for w in _zset(state, "idle"):
        s = state.ws.get(w, {})
        if s.get("status") != "idle" or state.wq.get(w):
            broken.append(f"{w} is idle but its state is {s}, its queue {state.wq.get(w)}")

    broken += ready_sets(model, state, bound)
    broken += tag_index(state)
    return broken


def tag_index(state: State) -> list[str]:
    """The tag index (keys.py, TAG INDEX) agrees with the job records: per tag, its jobs waiting
    to start (pending or assigned); the name index holds the same tags; each dead letter is in
    exactly the failed-by indexes of its type, tag and error type."""
    broken = []
    waiting: Counter[str] = Counter(
        rec.get("tid", "?") for rec in state.jobs.values() if rec.get("status") in WAITING
    )
    index = {tid: int(n) for tid, n in _zset(state, "backlog").items()}
    if index != dict(waiting):
        broken.append(f"backlog index {index} but the records wait {dict(waiting)}")
    names = _zset(state, "tag-names")
    if set(names) != set(index) or any(names.values()):
        broken.append(f"tag-names {names} does not list the backlog's tags {sorted(index)}")
    for key, ids in state.single.items():
        if key.startswith("tag-done:") and len(ids) > 40:  # trimmed to 20 once past 40
            broken.append(f"{key} holds {len(ids)} ids")
    failed = _zset(state, "failed")
    expected: dict[str, set[str]] = {}
    for job_id in failed:
        rec = state.jobs.get(job_id)
        if rec is None:
            continue  # its record expired: the index entries age out with it
        error_type = json.loads(rec.get("error") or "{}").get("type")
        for key in (
            f"failed-by:type:{rec['type'].encode().hex()}",
            f"failed-by:tag:{rec['tid']}",
            f"failed-by:error:{error_type.encode().hex()}" if error_type else "",
        ):
            if key:
                expected.setdefault(key, set()).add(job_id)
    actual = {
        key: set(dict(members))
        for key, members in state.single.items()
        if key.startswith("failed-by:")
    }
    for key in expected.keys() | actual.keys():
        expired = {i for i in actual.get(key, set()) if i in failed and i not in state.jobs}
        stray = actual.get(key, set()) - expected.get(key, set()) - expired
        missing = expected.get(key, set()) - actual.get(key, set())
        if stray or missing:
            broken.append(f"{key} holds {sorted(stray)} wrongly, lacks {sorted(missing)}")
    return broken


def ready_sets(model: Model, state: State, bound: dict[str, dict[str, float]]) -> list[str]:
    """Every tag is filed where refresh_tag (lua/_shared.lua) would file it, with its rank, and
    no two ready tags share a rank."""
    broken = []
    ready_bound, ready_new = _zset(state, "ready:bound"), _zset(state, "ready:new")
    held, turns = _zset(state, "held"), state.single.get("turns", {})
    paused = set(state.single.get("paused-tags", []))
    for tid in state.tags.keys() | ready_bound.keys() | ready_new.keys() | turns.keys():
        ids = state.tags.get(tid, [])
        into = None
        if ids and tid not in held and tid not in paused:
            members = bound.get(tid, {})
            if members and min(members.values()) < model.max_batch:
                into = "ready:bound"
            elif len(members) < model.limit(tid):
                into = "ready:new"
        if not ids and tid in turns:
            broken.append(f"tag {tid} has no work but keeps a turn")
        for name, zset in (("ready:bound", ready_bound), ("ready:new", ready_new)):
            if name == into:
                rank = max(order_of(ids[0]), float(turns.get(tid, 0)))
                if zset.get(tid) != rank:
                    broken.append(f"tag {tid} should be in {name} at {rank}: {zset.get(tid)}")
            elif tid in zset:
                broken.append(f"tag {tid} is in {name} but should be in {into}")
    # Weighted turns (not whole numbers) are indexed by value, and only they (lua next_turn).
    weighted = {t: float(v) for t, v in turns.items() if float(v) != int(float(v))}
    if _zset(state, "vturns") != weighted:
        broken.append(f"weighted turns {weighted} but the index holds {_zset(state, 'vturns')}")
    # Ranks decide which tag goes first: a tie would be decided by tag bytes, not by age.
    ranks = Counter([*ready_bound.values(), *ready_new.values()])
    broken += [f"{n} ready tags share the rank {r}" for r, n in ranks.items() if n > 1]
    return broken


KEPT_FAMILIES = ("job:", "req:", "dedupe:", "tag-done:", "failed-by:", "bucket:")
KEPT = {"completed", "failed", "counts", "seq", "fence", "epoch", "config", "limits", "wake"}
KEPT |= {"election", "paused-tags", "weights", "rates"}
"""Keys a drained queue may keep: retention records and indexes, request-token replies,
deduplication windows, and the queue's own settings and counters."""


def left_behind(state: State) -> list[str]:
    """Keys a drained queue (no job waiting, no worker, no leader) should not have."""
    out = [f"worker key {k}" for k in (*state.wq, *state.ws)]
    out += [f"tag list {t}" for t in state.tags]
    out += [f"{{q}}:{k}" for k in state.single if not k.startswith(KEPT_FAMILIES) and k not in KEPT]
    counts = state.single.get("counts", {})
    out += [f"counts {c} = {counts[c]}" for c in ("pending", "delayed", "assigned", "active")
            if int(counts.get(c, 0))]  # fmt: skip
    return out
