"""A randomized workload on named queues of one cluster, recorded outside Redis.

Two ``AffinityQueue`` instances (two would-be leaders per queue, a few workers each) run every
queue; a producer per queue adds tasks of Zipf-sized tags at a steady pace while a fault is made.
Each handler run is written to an in-memory ledger in the shape of ``tests/fault/ledger.py``, so
its invariant check applies unchanged: every accepted task completed through one accepted run,
reruns only where a fault explains them, no two accepted runs of a tag overlapping, per-tag order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode

from affinity_queue import AffinityQueue, JobContext, QueueSettings, QueueUnavailableError
from affinity_queue.aio import cancel_and_wait
from affinity_queue.cluster import QueueCluster

from ..fault.ledger import Outcome, Run, by_uid, check
from .redis_cluster import RedisCluster as Servers

WORKERS_PER_INSTANCE = 3
N_TAGS = 40
RATE_PER_S = 150
"""Tasks each producer adds per second: well under what the cluster drains, so a stall shows
as a gap in the completions and recovery as the backlog draining."""


def settings(url: str, name: str, **overrides: Any) -> QueueSettings:
    values: dict[str, Any] = {
        "redis_url": url,
        "pending_queue_name": name,
        "worker_queue_prefix": f"{name}-wq",
        "worker_state_prefix": f"{name}-ws",
        "worker_count": WORKERS_PER_INSTANCE,
        "max_batch_size": 5,
        "scheduler_interval_ms": 200,
        "heartbeat_interval_ms": 500,
        "heartbeat_timeout_ms": 4000,
        "election_lock_ttl_ms": 4000,
        "shutdown_grace_period_ms": 3000,
        **overrides,
    }
    return QueueSettings(_env_file=None, **values)


@dataclass
class QueueLoad:
    """One queue's producer and what it accepted."""

    name: str
    rng: random.Random
    expected: dict[str, tuple[str, int]] = field(default_factory=dict)
    job_ids: dict[str, str] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    maybe_written: int = 0
    done_at: list[float] = field(default_factory=list)
    _seqs: defaultdict[str, itertools.count[int]] = field(
        default_factory=lambda: defaultdict(itertools.count)
    )

    def next_task(self) -> tuple[str, dict[str, Any]]:
        weights = [1 / (rank + 1) ** 1.1 for rank in range(N_TAGS)]
        tag = self.rng.choices([f"tag-{i}" for i in range(N_TAGS)], weights)[0]
        seq = next(self._seqs[tag])  # a refused add still uses up its seq: order stays strict
        uid = f"{self.name}/{tag}#{seq}"
        sleep_s = self.rng.choice([0.0, self.rng.uniform(0, 0.003)])
        payload = {"uid": uid, "seq": seq, "sleep_s": sleep_s}
        return uid, {"type": "work", "identifyTag": tag, "payload": payload}


class Load:
    """The queues ``names`` on ``servers``, driven by two instances and one producer each."""

    def __init__(self, servers: Servers, names: list[str], seed: int, **overrides: Any) -> None:
        self.servers = servers
        self.names = names
        self.queues = {n: QueueLoad(n, random.Random(f"{seed}-{n}")) for n in names}
        self._runs: dict[tuple[str, str, int], Run] = {}
        self.instances = [self._instance(overrides) for _ in range(2)]
        self._producers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def _instance(self, overrides: dict[str, Any]) -> AffinityQueue:
        url = self.servers.url
        first, *rest = self.names
        aq = AffinityQueue(
            settings(url, first, **overrides),
            queues={n: settings(url, n, **overrides) for n in rest},
        )
        for queue in self.names:
            self._record(aq, queue)
        return aq

    @property
    def runs(self) -> list[Run]:
        return sorted(self._runs.values(), key=lambda r: r.start)

    def queue_name(self, name: str) -> str:
        """The AffinityQueue name of a queue (the first one is the default queue)."""
        return "default" if name == self.names[0] else name

    def _record(self, aq: AffinityQueue, name: str) -> None:
        load = self.queues[name]

        @aq.handler("work", queue=self.queue_name(name))
        async def work(payload: dict[str, Any], ctx: JobContext) -> None:
            key = (payload["uid"], ctx.worker_id, ctx.attempt)
            run = Run(payload["uid"], ctx.job_id, ctx.identify_tag, payload["seq"],
                      ctx.worker_id, ctx.attempt, os.getpid(), time.time(), None)  # fmt: skip
            self._runs[key] = run
            await asyncio.sleep(payload["sleep_s"])
            end = time.time()
            self._runs[key] = dataclasses.replace(run, end=end)
            load.done_at.append(end)

    async def start(self) -> None:
        for aq in self.instances:
            await aq.start()
        for name in self.names:
            self._producers.append(asyncio.create_task(self._produce(name)))

    async def _produce(self, name: str) -> None:
        load = self.queues[name]
        queue = self.instances[0].queue(self.queue_name(name))
        period_s = 1 / RATE_PER_S
        next_at = time.monotonic()
        while not self._stop.is_set():
            batch = load.rng.choice([1, 1, 1, 5, 20])
            tasks = [load.next_task() for _ in range(batch)]
            try:
                if batch == 1:
                    jobs = [await queue.add(tasks[0][1])]
                else:
                    jobs = await queue.add_bulk(t for _, t in tasks)
            except QueueUnavailableError as e:
                # Not accepted: the caller was told. "maybe written" tasks may still run; the
                # check ignores tasks that were never accepted.
                load.refused += len(tasks)
                load.maybe_written += len(tasks) if e.maybe_written else 0
            else:
                now = time.time()
                for (uid, task), job in zip(tasks, jobs, strict=True):
                    load.expected[uid] = (task["identifyTag"], task["payload"]["seq"])
                    load.job_ids[uid] = job.id
                    load.accepted_at[uid] = now
            next_at += period_s * batch
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def stop_producing(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._producers)  # each stops at its next pause
        self._producers.clear()

    def done(self, name: str) -> int:
        return len(self.queues[name].done_at)

    async def outcomes(self, name: str) -> dict[str, Outcome]:
        """What Redis recorded for each accepted task of ``name``."""
        load = self.queues[name]
        keys = self.instances[0].settings(self.queue_name(name)).keys
        # The library's client: redis-py's own closes nothing after a connection error.
        client = QueueCluster(
            home_key=keys.queue_prefix,
            max_connections=4,
            pool_timeout_s=5,
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.servers.live()],
            decode_responses=True,
        )
        try:
            uids = list(load.expected)
            out: dict[str, Outcome] = {}
            for i in range(0, len(uids), 500):
                chunk = uids[i : i + 500]
                async with client.pipeline() as pipe:
                    for uid in chunk:
                        pipe.hmget(keys.job(load.job_ids[uid]), "status", "worker", "attempts")
                    rows = await pipe.execute()
                for uid, row in zip(chunk, rows, strict=True):
                    out[uid] = Outcome(row[0] or "missing", row[1] or "", int(row[2] or 0))
            return out
        finally:
            await client.aclose()

    async def drained(self, name: str, limit_s: float, *, skip: Collection[str] = ()) -> None:
        """Wait until every accepted task of ``name`` (but those in ``skip``) is completed."""
        deadline = time.monotonic() + limit_s

        def stuck(outs: dict[str, Outcome]) -> dict[str, Outcome]:
            return {u: o for u, o in outs.items() if o.status != "completed" and u not in skip}

        while True:
            with contextlib.suppress(Exception):  # the topology may still be settling
                if not stuck(await self.outcomes(name)):
                    return
            if time.monotonic() > deadline:
                left = stuck(await self.outcomes(name))
                raise AssertionError(
                    f"{name}: {len(left)} accepted tasks not completed after {limit_s} s: "
                    f"{dict(list(left.items())[:10])}"
                )
            await asyncio.sleep(0.2)

    async def check(
        self, name: str, *, reruns: bool = False, lost_ok: Collection[str] = ()
    ) -> None:
        """The ledger invariants for ``name``. ``reruns``: a task may run twice (a failover can
        lose a finish the replica had not received yet); ``lost_ok``: accepted tasks a failover
        lost (a master acknowledged them and died before its replica had them)."""
        expected = {u: v for u, v in self.queues[name].expected.items() if u not in lost_ok}
        outcomes = await self.outcomes(name)
        check(self.runs, expected, outcomes, faulty_pids=None, max_runs=2 if reruns else 1)

    def reruns(self, name: str) -> int:
        """Accepted tasks of ``name`` that ran more than once."""
        expected = self.queues[name].expected
        return sum(1 for uid, rs in by_uid(self.runs).items() if uid in expected and len(rs) > 1)

    def stall_s(self, name: str, after: float) -> float:
        """The longest gap between completions of ``name`` from ``after`` (a fault) on: how long
        its processing stopped."""
        times = sorted([after, *(t for t in self.queues[name].done_at if t >= after)])
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def aclose(self) -> None:
        await self.stop_producing()
        for aq in self.instances:
            await aq.aclose()
