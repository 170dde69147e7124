"""The chaos soak's machinery (issue 11, item 2): a fault schedule drawn from a seed, a producer
that remembers what each add answered, and the checks that only a soak can make from the ledger.

Faults run one after another (a process paused by one is resumed before the next starts), so each
window in ``Chaos.faults`` explains what happened inside it. The checks in ``ledger.check`` (nothing
lost, one accepted run per task, per-tag order) are applied as they are; this module adds what a
soak needs on top: every extra run explained by a fault, real-time exclusivity of *all* runs of a
tag (with the time a process was stopped taken out), the batch rule, and no silent duplicate.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from affinity_queue import QueueUnavailableError

from ..proxy import Proxy
from ..redis_server import RedisServer
from .conftest import Cluster, Monitor, Node, Producer, wait_for
from .ledger import Outcome, Run

PROCESS_FAULTS = ("kill_worker", "kill_leader", "stop_worker", "stop_leader")
KINDS = (
    *PROCESS_FAULTS,
    "lose_reply",
    "cut_all",
    "half_open",
    "latency",
    "redis_restart",
    "oom",
    "readonly",
)
WEIGHTS = (3, 2, 3, 2, 3, 2, 2, 1, 1, 1, 1)
AFTERMATH_S = 8.0
"""How long after a Redis or network fault a run may still be repeated because of it: a lease
that lapsed during the fault (HEARTBEAT_TIMEOUT) is noticed by the reaper, and a client stuck on
a half-open connection waits out its socket timeout, before the task runs again."""
OUTCOME_WRITE_S = 1.0
"""How long after a handler returned its outcome may still be on its way to Redis (see
``explain_repeats``)."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    t0: float
    t1: float
    pid: int | None = None  # the process it hit, for process faults
    detail: str = ""


@dataclass
class Chaos:
    """Injects faults drawn from ``rng`` into one cluster, one at a time, and logs them."""

    rng: random.Random
    cluster: Cluster
    server: RedisServer
    spare: RedisServer  # a throwaway server that briefly masters ``server`` for READONLY
    proxy: Proxy
    monitor: Monitor
    faults: list[Fault] = field(default_factory=list)
    _spawned: int = 0

    def admin(self, server: RedisServer) -> aioredis.Redis:
        return aioredis.Redis(port=server.port, decode_responses=True, socket_timeout=5)

    async def run(self, until: float) -> None:
        while time.time() < until:
            kind = self.rng.choices(KINDS, WEIGHTS)[0]
            await getattr(self, kind)(kind)
            await asyncio.sleep(self.rng.uniform(0.3, 3.0))  # pacing between faults

    def _log(self, kind: str, t0: float, pid: int | None = None, detail: str = "") -> None:
        self.faults.append(Fault(kind, t0, time.time(), pid, detail))

    # Processes.

    def _leader(self) -> Node | None:
        s = self.monitor.samples[-1] if self.monitor.samples else None
        node = self.cluster.leader_node(s.node) if s else None
        return node if node is not None and node.alive else None

    def _victim(self, kind: str) -> Node | None:
        leader = self._leader()
        if kind.endswith("leader"):
            return leader
        others = [n for n in self.cluster.nodes if n.alive and n is not leader]
        return self.rng.choice(others) if others else None

    async def kill_worker(self, kind: str) -> None:
        victim = self._victim(kind)
        if victim is None:
            return
        t0 = victim.send(signal.SIGKILL)
        victim.proc.wait(10)
        self._log(kind, t0, victim.pid, victim.name)
        role = "WORKER" if victim.name.startswith("worker") else "BOTH"
        self._spawned += 1
        replacement = self.cluster.spawn(f"{role.lower()}-r{self._spawned}", role=role)
        await self.cluster.ready(replacement)

    kill_leader = kill_worker

    async def stop_worker(self, kind: str) -> None:
        victim = self._victim(kind)
        if victim is None:
            return
        paused_s = self.rng.uniform(0.3, 4.0)
        t0 = victim.send(signal.SIGSTOP)
        try:
            await asyncio.sleep(paused_s)  # the pause itself
        finally:
            victim.send(signal.SIGCONT)
        self._log(kind, t0, victim.pid, f"{victim.name} {paused_s:.1f} s")

    stop_leader = stop_worker

    # The network between the processes and Redis.

    async def lose_reply(self, kind: str) -> None:
        t0, before = time.time(), self.proxy.replies_lost
        self.proxy.lose_reply_of(b"EVALSHA")
        try:
            await wait_for(lambda: self.proxy.replies_lost > before, limit_s=3, what="a script")
        except AssertionError:
            return  # nothing called a script meanwhile: no fault happened
        finally:
            self.proxy.lose_reply_of(None)
        self._log(kind, t0)

    async def cut_all(self, kind: str) -> None:
        t0 = time.time()
        self._log(kind, t0, detail=f"{self.proxy.cut_all()} connections")

    async def half_open(self, kind: str) -> None:
        held_s = self.rng.uniform(1.0, 4.0)
        t0 = time.time()
        self.proxy.half_open(True)
        try:
            await asyncio.sleep(held_s)  # the fault itself
        finally:
            self.proxy.half_open(False)
        self._log(kind, t0, detail=f"{held_s:.1f} s")

    async def latency(self, kind: str) -> None:
        delay_s, held_s = self.rng.uniform(0.05, 0.3), self.rng.uniform(1.0, 3.0)
        t0 = time.time()
        self.proxy.latency_s = delay_s
        try:
            await asyncio.sleep(held_s)  # the fault itself
        finally:
            self.proxy.latency_s = 0.0
        self._log(kind, t0, detail=f"{delay_s * 1000:.0f} ms for {held_s:.1f} s")

    # Redis itself.

    async def redis_restart(self, kind: str) -> None:
        down_s = self.rng.uniform(0.3, 3.0)
        t0 = time.time()
        self.server.kill()  # SIGKILL: only what the AOF holds survives (appendfsync always)
        await asyncio.sleep(down_s)  # the outage itself
        self.server.start()  # same port, same dir
        self._log(kind, t0, detail=f"down {down_s:.1f} s")

    async def oom(self, kind: str) -> None:
        held_s = self.rng.uniform(1.0, 3.0)
        admin = self.admin(self.server)
        try:
            used = int((await admin.info("memory"))["used_memory"])
            t0 = time.time()
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", used + 64 * 1024)
            try:
                await asyncio.sleep(held_s)  # the fault itself
            finally:
                await admin.config_set("maxmemory", 0)
        finally:
            await admin.aclose()
        self._log(kind, t0, detail=f"{held_s:.1f} s")

    async def readonly(self, kind: str) -> None:
        """Make the server a replica for a while, without losing a write: the spare first copies
        it (writes paused until the copy has caught up), becomes a master, and the server follows
        it (so both hold the same data), then the server is a master again."""
        held_s = self.rng.uniform(1.0, 3.0)
        main, spare = self.admin(self.server), self.admin(self.spare)
        try:
            await spare.replicaof("127.0.0.1", self.server.port)
            await wait_for(lambda: _synced(main, spare), limit_s=15, what="the spare to sync")
            t0 = time.time()
            await main.client_pause(10_000, all=False)  # writes wait; reads go on
            try:
                await wait_for(lambda: _synced(main, spare), limit_s=5, what="the spare's copy")
                await spare.replicaof("NO", "ONE")
                await main.replicaof("127.0.0.1", self.spare.port)
            finally:
                await main.client_unpause()
            await asyncio.sleep(held_s)  # READONLY for everyone who writes
            await main.replicaof("NO", "ONE")
        finally:
            await main.aclose()
            await spare.aclose()
        self._log(kind, t0, detail=f"{held_s:.1f} s")

    def stopped(self) -> dict[int, list[tuple[float, float]]]:
        """pid -> the windows it was stopped (SIGSTOP to SIGCONT)."""
        out: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for f in self.faults:
            if f.kind.startswith("stop") and f.pid is not None:
                out[f.pid].append((f.t0, f.t1))
        return out

    def killed(self) -> dict[int, float]:
        return {f.pid: f.t0 for f in self.faults if f.kind.startswith("kill") and f.pid}


async def _synced(main: aioredis.Redis, spare: aioredis.Redis) -> bool:
    info = await spare.info("replication")
    if info.get("master_link_status") != "up":
        return False
    offset = (await main.info("replication"))["master_repl_offset"]
    return bool(info["slave_repl_offset"] >= offset)


class LoadProducer(Producer):
    """A producer under faults: remembers when each add returned, and what a failed add said."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.added_at: dict[str, float] = {}
        self.unsure: dict[str, tuple[str, int]] = {}  # failed, but "maybe written"
        self.refused: set[str] = set()  # failed, and nothing was written

    async def offer(self, tag: str, n: int, sleep_s: float) -> None:
        first = self._next.get(tag, 0)
        uids = [f"{tag}#{seq}" for seq in range(first, first + n)]
        try:
            await self.add(tag, n, sleep_s=sleep_s)
        except QueueUnavailableError as e:
            for seq, uid in enumerate(uids, first):
                if e.maybe_written:
                    self.unsure[uid] = (tag, seq)
                else:
                    self.refused.add(uid)
            return
        now = time.time()
        self.added_at.update(dict.fromkeys(uids, now))


@dataclass
class Findings:
    """What the soak's own checks found, for the summary and the assertion."""

    problems: list[str] = field(default_factory=list)
    explained: Counter[str] = field(default_factory=Counter)
    max_overlap: int = 0
    zombie_overlaps: list[str] = field(default_factory=list)
    full_batch_continuations: int = 0
    batch_checks_skipped: int = 0


def explain_repeats(
    runs: Iterable[Run], outcomes: Mapping[str, Outcome], faults: list[Fault], f: Findings
) -> None:
    """Every run Redis did not accept must overlap a fault that can interrupt it: its own process
    killed or stopped, or a Redis or network fault (plus its aftermath). Counted by fault and by
    whether the run was cut off or had finished (then only its outcome was not recorded).

    A finished run's outcome reaches Redis with the worker's next ``advance``, a round trip after
    the handler returned (longer under load or a network fault), so a fault that starts up to
    OUTCOME_WRITE_S after the run's end still explains it."""
    for r in runs:
        out = outcomes.get(r.uid)
        if out is not None and (r.worker, r.attempt) == (out.worker, out.attempts):
            continue
        until = r.end + OUTCOME_WRITE_S if r.end is not None else float("inf")
        own = [x for x in faults if x.pid == r.pid and x.t0 <= until and r.start <= x.t1 + 1.0]
        shared = [
            x
            for x in faults
            if x.pid is None and x.t0 - 0.5 <= until and r.start <= x.t1 + AFTERMATH_S
        ]
        why = next((x.kind for x in own + shared), None)
        if why is None:
            near = [x for x in faults if r.start - 10 <= x.t1 and x.t0 <= until + 10]
            f.problems.append(f"unexplained repeat: {r}; faults within 10 s: {near}")
        else:
            f.explained[f"{why} ({'cut off' if r.end is None else 'finished'})"] += 1


def _active(r: Run, killed: Mapping[int, float], stops: list[tuple[float, float]], now: float):
    """The pieces of real time in which a run's handler could act."""
    end = r.end if r.end is not None else killed.get(r.pid, now)
    pieces = [(r.start, end)]
    for s0, s1 in stops:
        pieces = [p for a, b in pieces for p in ((a, min(b, s0)), (max(a, s1), b)) if p[0] < p[1]]
    return pieces


def check_exclusivity(runs: list[Run], chaos: Chaos, f: Findings, limit: int = 1) -> None:
    """At no instant do more than ``limit`` runs of one tag act, counting every run (repeats and
    runs a dead lease left going), with the time their process was stopped taken out. Overlaps
    that involve a run whose process was stopped mid-run are listed apart: a process frozen past
    its lease resumes in its handler before it can learn that the lease is gone."""
    killed, stopped, now = chaos.killed(), chaos.stopped(), time.time()
    per_tag: dict[str, list[tuple[float, int, Run]]] = defaultdict(list)
    for r in runs:
        for a, b in _active(r, killed, stopped.get(r.pid, []), now):
            per_tag[r.tag] += [(a, 1, r), (b, -1, r)]
    for tag, events in per_tag.items():
        events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
        acting: set[Run] = set()
        for _, delta, r in events:
            if delta < 0:
                acting.discard(r)
                continue
            acting.add(r)
            f.max_overlap = max(f.max_overlap, len(acting))
            if len(acting) > limit:
                what = f"tag {tag}: {len(acting)} runs at once: {sorted(acting, key=str)}"
                zombie = any(_stopped_during(x, stopped) for x in acting)
                (f.zombie_overlaps if zombie else f.problems).append(what)


def _stopped_during(r: Run, stopped: Mapping[int, list[tuple[float, float]]]) -> bool:
    until = r.end if r.end is not None else float("inf")
    return any(s0 <= until and r.start <= s1 for s0, s1 in stopped.get(r.pid, []))


def check_batch_rule(
    runs: list[Run],
    added_at: Mapping[str, float],
    faults: list[Fault],
    max_batch: int,
    f: Findings,
    margin_s: float = 0.1,
) -> None:
    """A worker that ran ``max_batch`` tasks of a tag in a row and then starts another batch of it
    must have had no other tag to take: no task of another tag waiting since before its last run
    ended, whose tag no worker was serving meanwhile. Checked away from faults only (a dead or
    stopped worker keeps its tag bound until it is reaped, which the ledger cannot see)."""
    first_start: dict[str, float] = {}
    per_tag: dict[str, list[Run]] = defaultdict(list)
    per_worker: dict[str, list[Run]] = defaultdict(list)
    for r in runs:  # oldest start first
        first_start.setdefault(r.uid, r.start)
        per_tag[r.tag].append(r)
        per_worker[r.worker].append(r)
    waiting = sorted((t, uid) for uid, t in added_at.items())

    def serving(tag: str, a: float, b: float) -> bool:
        return any(
            r.start <= b and (r.end if r.end is not None else float("inf")) >= a
            for r in per_tag[tag]
        )

    for rs in per_worker.values():
        streak = 0
        for prev, r in zip([None, *rs], rs, strict=False):
            streak = streak + 1 if prev is not None and prev.tag == r.tag else 1
            if prev is None or streak <= max_batch or (streak - 1) % max_batch:
                continue
            f.full_batch_continuations += 1
            released = prev.end if prev.end is not None else prev.start
            if any(x.t0 <= r.start + 0.5 and released - 0.5 <= x.t1 + 4 for x in faults):
                f.batch_checks_skipped += 1
                continue
            for added, uid in waiting:
                if added >= released - margin_s:
                    break
                tag = uid.rsplit("#", 1)[0]
                if (
                    tag != r.tag
                    and first_start.get(uid, float("inf")) > r.start + margin_s
                    and not serving(tag, released - margin_s, r.start + margin_s)
                ):
                    f.problems.append(
                        f"batch rule: {r.worker} began a new batch of {r.tag} at {r.start:.3f} "
                        f"while {uid} (added {added:.3f}) waited on an unserved tag"
                    )
                    break


def check_no_silent_duplicates(
    runs: list[Run], producer: LoadProducer, counts: Mapping[str, str], f: Findings
) -> dict[str, tuple[str, int]]:
    """One job per uid, refused adds absent, and Redis's counts equal to the jobs that exist.
    Returns the uids that exist (the accepted ones and the unsure adds that Redis applied)."""
    jobs: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        jobs[r.uid].add(r.job)
    for uid, ids in jobs.items():
        if len(ids) > 1:
            f.problems.append(f"silent duplicate: {uid} exists as jobs {sorted(ids)}")
        if uid in producer.refused:
            f.problems.append(f"{uid}: its add was refused as unwritten, but it ran as {ids}")
        if uid in producer.expected and producer.job_ids[uid] not in ids:
            f.problems.append(f"{uid}: added as {producer.job_ids[uid]}, ran as {ids}")
    written = {u: v for u, v in producer.unsure.items() if u in jobs}
    for uid in written:
        producer.job_ids[uid] = next(iter(jobs[uid]))
    exist = {**producer.expected, **written}
    left = {k: int(v) for k, v in counts.items() if k != "completed" and int(v)}
    if left or int(counts.get("completed", 0)) != len(exist):
        f.problems.append(f"counts {dict(counts)} but {len(exist)} jobs exist, all completed")
    return exist
