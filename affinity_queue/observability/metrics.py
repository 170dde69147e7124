"""Prometheus metrics: counters and histograms from the process that did the work, queue-wide
gauges read from Redis at scrape time.

    from affinity_queue.observability.metrics import metrics_app

    app.mount("/metrics", metrics_app(aq))

The only module that imports ``prometheus_client`` (the ``metrics`` extra). Nothing here costs a
Redis call: counters live in the process, and a job's wait (enqueue to start, in Redis time)
comes with the job in ``advance``'s reply. A scrape reads a bounded set of keys whatever the
backlog or the number of tags (see :class:`QueueCollector`).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..keys import tag_from_id
from . import missing_extra

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(missing_extra("metrics", "prometheus-client")) from e

if TYPE_CHECKING:
    from ..core import AffinityQueue

log = logging.getLogger("affinity_queue.metrics")

TOP_TAGS = 20
"""Tags with a series of their own in the per-tag gauges; the rest add up in ``__other__``."""
OTHER_TAG = "__other__"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class _Histogram:
    """Bucket counts and a sum: an observation is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


COUNTERS = {
    "affinity_queue_tasks_enqueued": ("Tasks added by this process.", ("type",)),
    "affinity_queue_tasks_finished": (
        "Runs finished by this process's workers: completed or failed for good (a failed "
        "attempt that will run again counts in task_retries_total).",
        ("type", "outcome"),
    ),
    "affinity_queue_task_retries": ("Failed attempts that will run again.", ("type",)),
    "affinity_queue_tasks_recovered": (
        "Dead workers whose jobs this process's leader handed back.",
        (),
    ),
    "affinity_queue_tag_handovers": ("Tags released by this process's workers.", ("reason",)),
    "affinity_queue_leader_changes": ("Terms this process began as leader.", ()),
    "affinity_queue_fenced_rejections": (
        "Terms of this process's scheduler that ended refused (its fence was stale).",
        (),
    ),
}
HISTOGRAMS = {
    "affinity_queue_task_duration_seconds": ("Handler run time, per attempt.", DURATION_BUCKETS),
    "affinity_queue_task_wait_seconds": (
        "From enqueue (or the end of its delay) to the start of the run, per attempt.",
        WAIT_BUCKETS,
    ),
}


class QueueMetrics:
    """The :class:`~affinity_queue.observability.MetricsRecorder` of one queue.

    Plain in-process accumulators, turned into metric families only at scrape time: the
    client library's ``labels().inc()`` and ``observe()`` take a lock and cost several
    microseconds, a tenth of a no-op task's whole cost. Only the event loop's thread records.
    """

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[tuple[str, str], _Histogram] = {}

    def _inc(self, name: str, labels: tuple[str, ...], n: float = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + n

    def _observe(self, name: str, type: str, value: float) -> None:
        h = self.histograms.get((name, type))
        if h is None:
            h = self.histograms[(name, type)] = _Histogram(HISTOGRAMS[name][1])
        h.observe(value)

    def enqueued(self, type: str, n: int) -> None:
        self._inc("affinity_queue_tasks_enqueued", (type,), n)

    def finished(self, type: str, outcome: str, duration_s: float) -> None:
        if outcome == "retry":
            self._inc("affinity_queue_task_retries", (type,))
        else:
            self._inc("affinity_queue_tasks_finished", (type, outcome))
        self._observe("affinity_queue_task_duration_seconds", type, duration_s)

    def handover(self, reason: str) -> None:
        self._inc("affinity_queue_tag_handovers", (reason,))

    def recovered(self, workers: int) -> None:
        self._inc("affinity_queue_tasks_recovered", (), workers)

    def term_began(self) -> None:
        self._inc("affinity_queue_leader_changes", ())

    def fenced(self) -> None:
        self._inc("affinity_queue_fenced_rejections", ())

    def started(self, type: str, wait_ms: int) -> None:
        self._observe("affinity_queue_task_wait_seconds", type, wait_ms / 1000)


class ProcessCollector(Collector):
    """This process's counters and histograms, of every queue it instruments."""

    def __init__(self) -> None:
        self.queues: list[QueueMetrics] = []

    def collect(self) -> Iterator[Metric]:
        for name, (doc, labels) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["queue", *labels])
            for q in self.queues:
                for (metric, values), n in list(q.counters.items()):
                    if metric == name:
                        family.add_metric([q.queue, *values], n)
            yield family
        for name, (doc, _) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(name, doc, labels=["queue", "type"])
            for q in self.queues:
                for (metric, type_), h in list(q.histograms.items()):
                    if metric == name:
                        hist.add_metric([q.queue, type_], h.buckets(), h.sum)
            yield hist


@dataclass(slots=True)
class _Snapshot:
    """What one scrape read from Redis for one queue."""

    counts: dict[str, str]
    workers: dict[str, int] = field(default_factory=dict)  # status -> number
    tags_ready: int = 0
    tags_bound: int = 0
    backlog: dict[str, int] = field(default_factory=dict)  # tag -> jobs waiting to start
    oldest_wait_s: dict[str, float] = field(default_factory=dict)


STATES = ("pending", "delayed", "assigned", "active", "completed", "failed", "cancelled")


class QueueCollector(Collector):
    """Queue-wide gauges, read from Redis by :meth:`refresh` and yielded by :meth:`collect`.

    The cost of a scrape does not grow with the backlog or the number of tags: per queue it
    reads the counts hash, the lease index and every live worker's state (bounded by the
    workers, not the work), the ``top_tags`` busiest tags from the tag index (``backlog``, kept
    by the scripts), the sizes and the heads of the two ready sets (the tags with placeable
    work, scored by their oldest job's order), and for the ``top_tags + 1`` oldest-waiting of
    those their head job's times. So ``tag_backlog`` shows the tags with the most jobs waiting
    to start, and ``__other__`` the rest of them (pending + assigned, from the counts);
    ``tag_oldest_wait_seconds`` shows the longest-waiting placeable tags, and ``__other__`` the
    oldest wait among the other placeable tags.
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
                    log.warning(
                        "queue %s: metrics could not read Redis: %r", name, e, extra={"queue": name}
                    )
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
            pipe.zrevrange(k.backlog, 0, self._top - 1, withscores=True)
            (
                (secs, micros),
                counts,
                leases,
                n_bound,
                n_new,
                heads_b,
                heads_n,
                busiest,
            ) = await pipe.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        snap = _Snapshot(counts, tags_ready=int(n_bound) + int(n_new))
        oldest = [tid for tid, _ in sorted([*heads_b, *heads_n], key=lambda m: m[1])[:n]]
        async with redis.pipeline(transaction=False) as pipe:
            for wid, _ in leases:
                pipe.hmget(k.worker_state(wid), ["status", "tid"])
            for tid in oldest:
                pipe.lindex(k.tag_prefix + tid, 0)
            replies = await pipe.execute()
        states, heads = replies[: len(leases)], replies[len(leases) :]
        bound: set[str] = set()
        for (_, expiry), (status, tid) in zip(leases, states, strict=True):
            kind = "dead" if expiry < now_ms else status or "gone"
            snap.workers[kind] = snap.workers.get(kind, 0) + 1
            if status == "running" and tid:
                bound.add(tid)
        snap.tags_bound = len(bound)
        async with redis.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hmget(k.job(head or "-"), ["created", "due"])
            times = await pipe.execute() if heads else []
        waits = [max(0, now_ms - max(int(c), int(d or 0))) / 1000 if c else 0.0 for c, d in times]
        top = min(self._top, len(oldest))
        for tid, wait in zip(oldest[:top], waits, strict=False):
            snap.oldest_wait_s[tag_from_id(tid)] = wait
        snap.oldest_wait_s[OTHER_TAG] = waits[top] if len(waits) > top else 0.0
        for tid, n_waiting in busiest:
            snap.backlog[tag_from_id(tid)] = int(n_waiting)
        waiting = int(counts.get("pending", 0)) + int(counts.get("assigned", 0))
        snap.backlog[OTHER_TAG] = max(0, waiting - sum(snap.backlog.values()))
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
            f"Jobs waiting to start (pending or queued to a worker) of the {self._top} tags with "
            f"the most; the rest in tag={OTHER_TAG!r}.",
            labels=["queue", "tag"],
        )
        oldest = GaugeMetricFamily(
            "affinity_queue_tag_oldest_wait_seconds",
            f"Age of the oldest pending job (delay excluded) of the {self._top} longest-waiting "
            f"placeable tags; the oldest of the other placeable tags in tag={OTHER_TAG!r}.",
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
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"GET only\n", "text/plain")
            return
        body = await self.exposition()
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, CONTENT_TYPE_LATEST)


async def _respond(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    status: int,
    body: bytes,
    ctype: str,
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
    process = ProcessCollector()

    def recorder(name: str) -> QueueMetrics:
        process.queues.append(QueueMetrics(name))
        return process.queues[-1]

    aq.instrument(metrics=recorder)
    collector = QueueCollector(aq, top_tags)
    registry.register(process)
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
