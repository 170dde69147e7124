"""Prometheus metrics: counters and histograms from the process that did the work, queue-wide
gauges read from Redis at scrape time.

    from affinity_queue.observability.metrics import metrics_app

    app.mount("/metrics", metrics_app(aq))

The only module that imports ``prometheus_client`` (the ``metrics`` extra). Nothing here costs a
Redis call per task on the producer or in the handler's path: counters live in the process; a
job's wait (enqueue to start) is read once per event-loop turn for all the jobs that started in
it, off the handler's path. A scrape reads a bounded set of keys whatever the backlog or the
number of tags (see :class:`QueueCollector`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..keys import QueueKeys, tag_from_id
from . import missing_extra

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(missing_extra("metrics", "prometheus-client")) from e

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..core import AffinityQueue

log = logging.getLogger("affinity_queue.metrics")

TOP_TAGS = 20
"""Tags with a series of their own in the per-tag gauges; the rest add up in ``__other__``."""
OTHER_TAG = "__other__"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
RELEASE_REASONS = ("batch_full", "drained", "retry_hold", "lease_expired", "released_on_stop")


class _Families:
    """The per-process metric families of one registry, shared by all its queues."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.enqueued = counter(
            "affinity_queue_tasks_enqueued", "Tasks added by this process.", ("queue", "type")
        )
        self.finished = counter(
            "affinity_queue_tasks_finished",
            "Runs finished by this process's workers, by outcome (completed, failed, cancelled; "
            "a failed attempt that will retry counts in task_retries_total).",
            ("queue", "type", "outcome"),
        )
        self.retries = counter(
            "affinity_queue_task_retries", "Failed attempts that will run again.", ("queue", "type")
        )
        self.recovered = counter(
            "affinity_queue_tasks_recovered",
            "Dead workers whose jobs this process's leader handed back.",
            ("queue",),
        )
        self.handovers = counter(
            "affinity_queue_tag_handovers",
            "Tags released by this process's workers, by reason.",
            ("queue", "reason"),
        )
        self.leader_changes = counter(
            "affinity_queue_leader_changes", "Terms this process began as leader.", ("queue",)
        )
        self.fenced = counter(
            "affinity_queue_fenced_rejections",
            "Calls of this process's scheduler refused because its term had ended.",
            ("queue",),
        )
        self.duration = Histogram(
            "affinity_queue_task_duration_seconds",
            "Handler run time, per attempt.",
            ("queue", "type"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "affinity_queue_task_wait_seconds",
            "From enqueue (or the end of its delay) to the start of its run, per attempt.",
            ("queue", "type"),
            buckets=WAIT_BUCKETS,
            registry=registry,
        )


class QueueMetrics:
    """The :class:`~affinity_queue.observability.MetricsRecorder` of one queue.

    Label children are looked up once per (type, outcome) and kept: ``labels()`` takes a lock
    and builds a tuple, too dear for every task.
    """

    def __init__(self, families: _Families, queue: str) -> None:
        self._f = families
        self._queue = queue
        self._children: dict[tuple[str, ...], Any] = {}
        self._to_read: list[tuple[str, str]] = []  # (job id, type) started this turn
        self._reading: set[asyncio.Task[None]] = set()
        self._failing = False

    def _child(self, family: Any, *labels: str) -> Any:
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self._queue, *labels)
        return child

    def enqueued(self, type: str, n: int) -> None:
        self._child(self._f.enqueued, type).inc(n)

    def finished(self, type: str, outcome: str, duration_s: float) -> None:
        if outcome == "retry":
            self._child(self._f.retries, type).inc()
        else:
            self._child(self._f.finished, type, outcome).inc()
        self._child(self._f.duration, type).observe(duration_s)

    def handover(self, reason: str) -> None:
        self._child(self._f.handovers, reason).inc()

    def recovered(self, workers: int) -> None:
        self._child(self._f.recovered).inc(workers)

    def term_began(self) -> None:
        self._child(self._f.leader_changes).inc()

    def fenced(self) -> None:
        self._child(self._f.fenced).inc()

    def started(self, redis: Redis, keys: QueueKeys, job_id: str, type: str) -> None:
        if not self._to_read:
            asyncio.get_running_loop().call_soon(self._read_waits, redis, keys)
        self._to_read.append((job_id, type))

    def _read_waits(self, redis: Redis, keys: QueueKeys) -> None:
        batch, self._to_read = self._to_read, []
        task = asyncio.get_running_loop().create_task(self._observe_waits(redis, keys, batch))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def _observe_waits(
        self, redis: Redis, keys: QueueKeys, batch: list[tuple[str, str]]
    ) -> None:
        """One pipeline for every job that started in one turn: wait = started - max(created,
        due), all three written by the scripts with Redis's clock (no skew between hosts)."""
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for job_id, _ in batch:
                    pipe.hmget(keys.job(job_id), ["created", "due", "started"])
                replies = await pipe.execute()
        except Exception as e:
            if not self._failing:
                log.warning("queue %s: could not read job wait times: %r", self._queue, e)
            self._failing = True
            return
        self._failing = False
        for (_, type_), (created, due, started) in zip(batch, replies, strict=True):
            if created and started:
                enqueued = max(int(created), int(due or 0))
                self._child(self._f.wait, type_).observe(max(0, int(started) - enqueued) / 1000)


@dataclass(slots=True)
class _Snapshot:
    """What one scrape read from Redis for one queue."""

    counts: dict[str, str]
    workers: dict[str, int] = field(default_factory=dict)  # status -> number
    tags_ready: int = 0
    tags_bound: int = 0
    backlog: dict[str, int] = field(default_factory=dict)  # tag -> pending jobs
    oldest_wait_s: dict[str, float] = field(default_factory=dict)


STATES = ("pending", "delayed", "assigned", "active", "completed", "failed", "cancelled")


class QueueCollector(Collector):
    """Queue-wide gauges, read from Redis by :meth:`refresh` and yielded by :meth:`collect`.

    The cost of a scrape does not grow with the backlog or the number of tags: per queue it
    reads the counts hash, the leader, the lease index and every live worker's state (bounded by
    the workers, not the work), the sizes and the heads of the two ready sets (the tags with
    placeable work, scored by their oldest job's order), and for the ``top_tags + 1``
    oldest-waiting of those tags their length and their head job's times. So the per-tag gauges
    show the oldest-waiting placeable tags; ``__other__`` holds the rest of the pending jobs and
    the oldest wait among the other placeable tags.
    """

    def __init__(self, aq: AffinityQueue, top_tags: int = TOP_TAGS) -> None:
        if top_tags < 1:
            raise ValueError(f"top_tags must be at least 1, got {top_tags}")
        self._aq = aq
        self._top = top_tags
        self._snapshots: dict[str, _Snapshot] = {}
        self._failing: set[str] = set()

    async def refresh(self) -> None:
        snapshots: dict[str, _Snapshot] = {}
        for name in self._aq.names:
            try:
                snapshots[name] = await self._read(name)
            except Exception as e:
                if name not in self._failing:
                    log.warning("queue %s: metrics could not read Redis: %r", name, e)
                self._failing.add(name)
            else:
                self._failing.discard(name)
        self._snapshots = snapshots

    async def _read(self, name: str) -> _Snapshot:
        service = self._aq.queue(name)
        redis, k = service._redis, service._keys
        n = self._top + 1
        async with redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(k.counts)
            pipe.zrange(k.workers, 0, -1, withscores=True)
            pipe.zcard(k.ready_bound)
            pipe.zcard(k.ready_new)
            pipe.zrange(k.ready_bound, 0, n - 1, withscores=True)
            pipe.zrange(k.ready_new, 0, n - 1, withscores=True)
            (secs, micros), counts, leases, n_bound, n_new, heads_b, heads_n = await pipe.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        snap = _Snapshot(counts, tags_ready=int(n_bound) + int(n_new))
        oldest = [tid for tid, _ in sorted([*heads_b, *heads_n], key=lambda m: m[1])[:n]]
        async with redis.pipeline(transaction=False) as pipe:
            for wid, _ in leases:
                pipe.hmget(k.worker_state(wid), ["status", "tid"])
            for tid in oldest:
                pipe.llen(k.tag_prefix + tid)
                pipe.lindex(k.tag_prefix + tid, 0)
            replies = await pipe.execute()
        states, per_tag = replies[: len(leases)], replies[len(leases) :]
        bound: set[str] = set()
        for (_, expiry), (status, tid) in zip(leases, states, strict=True):
            kind = "dead" if expiry < now_ms else status or "gone"
            snap.workers[kind] = snap.workers.get(kind, 0) + 1
            if status == "running" and tid:
                bound.add(tid)
        snap.tags_bound = len(bound)
        lengths = per_tag[0::2]
        heads = per_tag[1::2]
        async with redis.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hmget(k.job(head or "-"), ["created", "due"])
            times = await pipe.execute() if heads else []
        waits = [max(0, now_ms - max(int(c), int(d or 0))) / 1000 if c else 0.0 for c, d in times]
        top = min(self._top, len(oldest))
        for tid, length, wait in zip(oldest[:top], lengths, waits, strict=False):
            tag = tag_from_id(tid)
            snap.backlog[tag] = int(length)
            snap.oldest_wait_s[tag] = wait
        rest = int(counts.get("pending", 0)) - sum(snap.backlog.values())
        snap.backlog[OTHER_TAG] = max(0, rest)
        snap.oldest_wait_s[OTHER_TAG] = waits[top] if len(waits) > top else 0.0
        return snap

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "affinity_queue_tasks",
            "Jobs by state, queue-wide (completed, failed, cancelled: totals since the queue "
            "began).",
            labels=["queue", "state"],
        )
        workers = GaugeMetricFamily(
            "affinity_queue_workers",
            "Registered workers by status (dead: lease expired, not yet reaped).",
            labels=["queue", "status"],
        )
        ready = GaugeMetricFamily(
            "affinity_queue_tags_ready", "Tags with placeable work.", labels=["queue"]
        )
        bound = GaugeMetricFamily(
            "affinity_queue_tags_bound", "Tags bound to a worker.", labels=["queue"]
        )
        backlog = GaugeMetricFamily(
            "affinity_queue_tag_backlog",
            f"Pending jobs of the {self._top} oldest-waiting placeable tags; the rest in "
            f"tag={OTHER_TAG!r}.",
            labels=["queue", "tag"],
        )
        oldest = GaugeMetricFamily(
            "affinity_queue_tag_oldest_wait_seconds",
            "Age of the oldest pending job of the tag (delay excluded).",
            labels=["queue", "tag"],
        )
        leader = GaugeMetricFamily(
            "affinity_queue_leader", "1 when this process leads the queue.", labels=["queue"]
        )
        for name in self._aq.names:
            leader.add_metric([name], float(self._aq.scheduler(name).is_leader))
            snap = self._snapshots.get(name)
            if snap is None:
                continue
            for state in STATES:
                tasks.add_metric([name, state], max(0, int(snap.counts.get(state, 0))))
            for status in ("idle", "running", "dead"):
                workers.add_metric([name, status], snap.workers.get(status, 0))
            ready.add_metric([name], snap.tags_ready)
            bound.add_metric([name], snap.tags_bound)
            for tag, n in snap.backlog.items():
                backlog.add_metric([name, tag], n)
            for tag, wait in snap.oldest_wait_s.items():
                oldest.add_metric([name, tag], wait)
        yield from (tasks, workers, ready, bound, backlog, oldest, leader)


class MetricsApp:
    """The ASGI app that serves the exposition (``text/plain; version=0.0.4``) on any GET."""

    def __init__(self, registry: CollectorRegistry, collector: QueueCollector) -> None:
        self.registry = registry
        self.collector = collector
        self._lock = asyncio.Lock()  # one Redis read at a time, however many scrapers

    async def exposition(self) -> bytes:
        async with self._lock:
            await self.collector.refresh()
            return bytes(generate_latest(self.registry))

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"GET only\n", "text/plain")
            return
        body = await self.exposition()
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, CONTENT_TYPE_LATEST)


async def _respond(
    send: Callable[[Any], Awaitable[None]], status: int, body: bytes, ctype: str
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def metrics_app(
    aq: AffinityQueue,
    *,
    registry: CollectorRegistry | None = None,
    top_tags: int = TOP_TAGS,
) -> MetricsApp:
    """Instrument every queue of ``aq`` and return the ASGI app that exposes its metrics.

    ``registry``: where the metrics go (default: a registry of their own, so two
    ``AffinityQueue`` objects in one process never clash; pass ``prometheus_client.REGISTRY``
    to serve them together with your own metrics from one endpoint).
    """
    registry = registry or CollectorRegistry(auto_describe=True)
    families = _Families(registry)
    aq.instrument(metrics=lambda name: QueueMetrics(families, name))
    collector = QueueCollector(aq, top_tags)
    registry.register(collector)
    return MetricsApp(registry, collector)


async def serve(app: MetricsApp, port: int, host: str = "0.0.0.0") -> asyncio.Server:
    """Serve ``app``'s exposition over plain HTTP on ``host:port`` (the worker command's
    ``--metrics-port``); close the returned server to stop. A minimal HTTP/1.0 responder on
    the running loop: no server framework, and no signal handlers taken from the command."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method = head.split(b" ", 1)[0].decode("latin-1")
            status, body, ctype = 405, b"GET only\n", "text/plain"
            if method in ("GET", "HEAD"):
                status, body, ctype = 200, await app.exposition(), CONTENT_TYPE_LATEST
            reason = "OK" if status == 200 else "Method Not Allowed"
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a scraper that went away
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
