"""Harness for the fault tests: node processes, a producer, a Redis sampler, condition waits.

Every test starts its own ``redis-server`` (``redis_factory``) and its own node processes
(``cluster``); the fixtures SIGCONT and SIGKILL whatever is left when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from affinity_queue import AffinityQueue, QueueSettings
from affinity_queue.aio import cancel_and_wait

from ..redis_server import RedisServer
from .ledger import Outcome, Run, read_runs

REPO = Path(__file__).resolve().parents[2]

LEASE_MS = 2000
HEARTBEAT_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
MAX_BATCH = 5


async def wait_for(
    cond: Callable[[], Any], *, limit_s: float, what: str, every: float = 0.05
) -> float:
    """Poll ``cond`` (sync or async) until it is truthy; return the seconds it took."""
    start = time.monotonic()
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(every)


def queue_env(redis_url: str, name: str, **overrides: Any) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "PENDING_QUEUE_NAME": name,
        "WORKER_QUEUE_PREFIX": f"{name}-wq",
        "WORKER_STATE_PREFIX": f"{name}-ws",
        "MAX_BATCH_SIZE": MAX_BATCH,
        "WORKER_COUNT": 1,
        "ELECTION_LOCK_TTL": LEASE_MS,
        "HEARTBEAT_INTERVAL": HEARTBEAT_MS,
        "HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT_MS,
        "SCHEDULER_INTERVAL": 200,
        "SHUTDOWN_GRACE_PERIOD": 5000,
        **overrides,
    }
    return {k: str(v) for k, v in env.items()}


def settings_of(env: dict[str, str]) -> QueueSettings:
    return QueueSettings(_env_file=None, **env)  # type: ignore[call-arg]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    ledger: Path
    status: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> float:
        """Send ``sig``; return the wall time it was sent (the ledgers' clock)."""
        t = time.time()
        os.kill(self.pid, sig)
        return t

    def events(self) -> list[dict[str, Any]]:
        out = []
        for text in self.status.read_text().splitlines() if self.status.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(text))
        return out

    def has(self, ev: str) -> bool:
        return any(e["ev"] == ev for e in self.events())

    @property
    def leading(self) -> bool:
        """What the node last said about its own leadership."""
        said = [e["ev"] for e in self.events() if e["ev"] in ("lead", "follow")]
        return bool(said) and said[-1] == "lead"

    @property
    def node_id(self) -> str:
        return next(e["node"] for e in self.events() if e["ev"] == "ready")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@dataclass
class Cluster:
    """The node processes of one test, all on one queue's settings (``env``)."""

    dir: Path
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    def spawn(self, name: str, *, role: str = "BOTH", **overrides: Any) -> Node:
        env = {
            **os.environ,
            **self.env,
            "APP_ROLE": role,
            "LEDGER_PATH": str(self.dir / f"{name}.ledger"),
            "STATUS_PATH": str(self.dir / f"{name}.status"),
            **{k: str(v) for k, v in overrides.items()},
        }
        stderr_path = self.dir / f"{name}.stderr"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fault.node"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        node = Node(name, proc, Path(env["LEDGER_PATH"]), Path(env["STATUS_PATH"]), stderr_path)
        self.nodes.append(node)
        return node

    async def ready(self, *nodes: Node, limit_s: float = 20) -> None:
        for node in nodes or self.nodes:
            await wait_for(lambda n=node: n.has("ready") or not n.alive, limit_s=limit_s,
                           what=f"{node.name} to start")  # fmt: skip
            assert node.alive, f"{node.name} exited at start:\n{node.stderr()[-3000:]}"

    async def stop(self, node: Node, *, limit_s: float = 15) -> float:
        """SIGTERM, wait until the process exits; return the seconds it took."""
        node.send(signal.SIGTERM)
        took = await wait_for(lambda: not node.alive, limit_s=limit_s, what=f"{node.name} to exit")
        assert node.proc.returncode == 0, f"{node.name} exit {node.proc.returncode}"
        return took

    def runs(self) -> list[Run]:
        return read_runs(n.ledger for n in self.nodes)

    def leader_node(self, node_id: str | None) -> Node | None:
        return next((n for n in self.nodes if n.has("ready") and n.node_id == node_id), None)

    def close(self) -> None:
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(ProcessLookupError):
                    node.send(signal.SIGCONT)
                    node.send(signal.SIGKILL)
                node.proc.wait(10)

    def report(self) -> str:
        parts = []
        for n in self.nodes:
            tail = "\n".join(n.stderr().splitlines()[-25:])
            parts.append(f"--- {n.name} pid {n.pid} exit {n.proc.returncode}\n{tail}")
        return "\n".join(parts)


class Producer:
    """Adds ``work`` tasks and remembers what was accepted: uid -> (tag, seq)."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.aq = AffinityQueue(settings)
        self.client = aioredis.Redis.from_url(
            settings.resolved_redis_url, decode_responses=True, socket_timeout=2
        )
        self.expected: dict[str, tuple[str, int]] = {}
        self.job_ids: dict[str, str] = {}
        self._next: dict[str, int] = {}

    async def add(
        self, tag: str, n: int = 1, *, sleep_s: float | None = None, type_: str = "work"
    ) -> list[str]:
        """Add ``n`` tasks of ``tag`` in one call; raises what ``add_bulk`` raises."""
        first = self._next.get(tag, 0)
        tasks, uids = [], []
        for seq in range(first, first + n):
            uid = f"{tag}#{seq}"
            payload: dict[str, Any] = {"uid": uid, "seq": seq}
            if sleep_s is not None:
                payload["sleep_s"] = sleep_s
            tasks.append({"type": type_, "identifyTag": tag, "payload": payload})
            uids.append(uid)
        self._next[tag] = first + n  # a failed add still uses up its seqs: order stays strict
        jobs = await self.aq.queue().add_bulk(tasks)
        for uid, job, seq in zip(uids, jobs, range(first, first + n), strict=True):
            self.expected[uid] = (tag, seq)
            self.job_ids[uid] = job.id
        return uids

    async def outcomes(self, uids: list[str] | None = None) -> dict[str, Outcome]:
        uids = list(self.expected) if uids is None else uids
        keys = self.settings.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for uid in uids:
                pipe.hmget(keys.job(self.job_ids[uid]), "status", "worker", "attempts")
            rows = await pipe.execute()
        return {
            uid: Outcome(row[0] or "missing", row[1] or "", int(row[2] or 0))
            for uid, row in zip(uids, rows, strict=True)
        }

    async def all_completed(self, uids: list[str] | None = None) -> bool:
        try:
            outs = await self.outcomes(uids)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            return False
        return all(o.status == "completed" for o in outs.values())

    async def wait_completed(self, *, limit_s: float, uids: list[str] | None = None) -> float:
        n = len(self.expected if uids is None else uids)
        try:
            return await wait_for(lambda: self.all_completed(uids), limit_s=limit_s,
                                  what=f"{n} tasks to complete", every=0.1)  # fmt: skip
        except AssertionError as e:
            stuck = {
                u: o for u, o in (await self.outcomes(uids)).items() if o.status != "completed"
            }
            raise AssertionError(f"{e}; not completed: {dict(list(stuck.items())[:20])}") from None


@dataclass
class Sample:
    t: float
    node: str | None
    fence: int | None
    since_s: float | None
    pttl: int
    token: str | None


class Monitor:
    """Samples the leader hash and every worker's batch every 50 ms, through Redis outages."""

    def __init__(self, redis_url: str, settings: QueueSettings) -> None:
        self.client = aioredis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
        )
        self.keys = settings.keys
        self.max_batch = settings.max_batch_size
        self.samples: list[Sample] = []
        self.batch_violations: list[str] = []
        self.max_batch_seen = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.leader).pttl(k.leader).zrange(k.workers, 0, -1)
            leader, pttl, workers = await pipe.execute()
        self.samples.append(
            Sample(
                time.time(),
                leader.get("node"),
                int(leader["fence"]) if "fence" in leader else None,
                int(leader["since"]) / 1000 if "since" in leader else None,
                pttl,
                leader.get("token"),
            )
        )
        if not workers:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for w in workers:
                pipe.hget(k.worker_state(w), "batch").llen(k.worker_queue(w))
            rows = await pipe.execute()
        for w, batch, qlen in zip(workers, rows[::2], rows[1::2], strict=True):
            b = int(batch or 0)
            self.max_batch_seen = max(self.max_batch_seen, b)
            if b > self.max_batch or qlen > b:
                self.batch_violations.append(f"{w}: batch {b}, queued {qlen}")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await self._sample()
            await asyncio.sleep(0.05)

    def start(self) -> Monitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def aclose(self) -> None:
        if self._task:
            # Not one cancel(): redis-py can swallow a cancellation that lands while it opens a
            # connection, and this loop would then sample for ever (seen in the chaos soak).
            await cancel_and_wait([self._task])
        await self.client.aclose()

    async def new_leader(self, *, other_than: str | None, limit_s: float) -> Sample:
        """Wait until the leader hash names a node other than ``other_than``; return it."""

        def seen() -> Sample | None:
            s = self.samples[-1] if self.samples else None
            return s if s and s.node is not None and s.node != other_than else None

        await wait_for(seen, limit_s=limit_s, what=f"a leader other than {other_than}", every=0.02)
        found = seen()
        assert found is not None
        return found

    def leaders(self) -> list[Sample]:
        """One sample per change of the leader hash (including to and from no leader)."""
        out: list[Sample] = []
        for s in self.samples:
            if not out or (s.node, s.fence) != (out[-1].node, out[-1].fence):
                out.append(s)
        return out

    def check_leaders(self, expected_terms: int) -> None:
        """Fencing numbers only grow, and leadership changed only as often as we caused it."""
        terms = [s for s in self.leaders() if s.node is not None]
        fences = [s.fence for s in terms]
        assert fences == sorted(set(fences)), f"fences not increasing: {fences}"  # type: ignore[type-var]
        assert len(terms) == expected_terms, f"expected {expected_terms} terms, saw {terms}"
        self.check_batches()

    def check_batches(self, *, reached: bool = False) -> None:
        """No worker ever held more than MAX_BATCH_SIZE jobs of its tag (``reached``: and some
        worker did fill its batch, so the bound was exercised)."""
        assert not self.batch_violations, self.batch_violations[:10]
        assert self.max_batch_seen <= self.max_batch
        if reached:
            assert self.max_batch_seen == self.max_batch, f"max batch seen {self.max_batch_seen}"


async def feed(
    producer: Producer, tags: list[str], stop: asyncio.Event, *, every_s: float = 0.15
) -> None:
    """Background load: one task per tag every ``every_s`` (pacing only, not a wait)."""
    while not stop.is_set():
        for tag in tags:
            await producer.add(tag)
        await asyncio.sleep(every_s)


def finished(runs: list[Run]) -> int:
    return sum(1 for r in runs if r.end is not None)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False) -> RedisServer:
        server = RedisServer(appendonly=appendonly).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)
        server.cleanup()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Cluster]]:
    made: list[Cluster] = []

    def make(env: dict[str, str]) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", env)
        c.dir.mkdir()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
        print(c.report())


@pytest.fixture
def queue_name() -> str:
    return f"f-{secrets.token_hex(4)}"


@pytest.fixture
async def producers() -> AsyncIterator[Callable[[QueueSettings], Producer]]:
    made: list[Producer] = []

    def make(settings: QueueSettings) -> Producer:
        p = Producer(settings)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.aq.aclose()
        await p.client.aclose()


@pytest.fixture
async def monitors() -> AsyncIterator[Callable[[str, QueueSettings], Monitor]]:
    made: list[Monitor] = []

    def make(url: str, settings: QueueSettings) -> Monitor:
        m = Monitor(url, settings).start()
        made.append(m)
        return m

    yield make
    for m in made:
        await m.aclose()


async def assert_no_keys_command(url: str) -> None:
    """``KEYS`` never ran on this server (since its last start)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert "cmdstat_keys" not in stats, stats["cmdstat_keys"]
