"""The timed workloads that go through the library's public API; one call is one run."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis

from affinity_queue import AffinityQueue
from affinity_queue.lua import Scripts

from ..env import Snapshot
from ..stats import percentile
from . import Config, make_tasks, settings

PROBES = frozenset({"info", "hgetall"})
"""Commands the benchmark itself sends inside measured windows; left out of the counts."""


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.001)


@contextmanager
def counting_scripts(counter: Counter[str]) -> Iterator[None]:
    """Count script calls by name (for one extra run only: the timed runs are not patched)."""
    original = Scripts._call

    async def counted(self: Scripts, name: str, *args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return await original(self, name, *args, **kwargs)

    Scripts._call = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        Scripts._call = original  # type: ignore[method-assign]


async def add_one_by_one(url: str, cfg: Config) -> float:
    """Producer alone (no workers running), each ``add`` awaited before the next: tasks/s."""
    aq = AffinityQueue(settings(url))
    q = aq.queue()
    items = make_tasks(cfg.tasks, cfg.tags)
    try:
        start = time.perf_counter()
        for item in items:
            await q.add(item)
        return len(items) / (time.perf_counter() - start)
    finally:
        await aq.aclose()


async def add_concurrently(url: str, cfg: Config) -> float:
    """``cfg.inflight`` producers, each awaiting its adds in turn: that many in flight."""
    aq = AffinityQueue(settings(url))
    q = aq.queue()
    items = make_tasks(cfg.tasks, cfg.tags)

    async def producer(share: list[dict[str, Any]]) -> None:
        for item in share:
            await q.add(item)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(producer(items[k :: cfg.inflight]) for k in range(cfg.inflight)))
        return len(items) / (time.perf_counter() - start)
    finally:
        await aq.aclose()


async def add_bulk(url: str, cfg: Config) -> float:
    aq = AffinityQueue(settings(url))
    items = make_tasks(cfg.tasks, cfg.tags)
    try:
        start = time.perf_counter()
        await aq.queue().add_bulk(items)
        return len(items) / (time.perf_counter() - start)
    finally:
        await aq.aclose()


async def drain(
    url: str,
    admin: Redis,
    cfg: Config,
    inner: frozenset[str],
    *,
    profile: bool = False,
    instrument: Callable[[AffinityQueue], object] | None = None,
) -> dict[str, Any]:
    """``cfg.tasks`` tasks queued first; then the workers start. Timed from ``start()`` until
    Redis counts every job completed; the server's counters are read over the same window.

    With ``profile``, pyinstrument samples the window and its text and HTML reports are
    returned under ``profile_text`` / ``profile_html``.
    """
    s = settings(url)
    aq = AffinityQueue(s)
    if instrument is not None:  # metrics or tracing on (bench.core.observability)
        instrument(aq)
    n = cfg.tasks
    done = asyncio.Event()
    seen = 0

    @aq.handler("noop")
    async def noop(payload: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await aq.queue().add_bulk(make_tasks(n, cfg.tags))

    async def all_completed() -> bool:
        return int((await admin.hgetall(s.keys.counts)).get("completed", 0)) >= n

    profiler = _profiler() if profile else None
    before = await Snapshot.take(admin)
    if profiler:
        profiler.start()
    start = time.perf_counter()
    try:
        await aq.start()
        await asyncio.wait_for(done.wait(), 300)
        handlers_s = time.perf_counter() - start
        await until(all_completed, 30, "drain: completions not recorded")
        elapsed_s = time.perf_counter() - start
        if profiler:
            profiler.stop()
        after = await Snapshot.take(admin)
    finally:
        await aq.aclose()
    d = after.since(before, ignore=PROBES)
    figures: dict[str, Any] = {
        "tasks_per_s": n / elapsed_s,
        "handlers_done_s": handlers_s,
        "elapsed_s": elapsed_s,
        "round_trips_per_task": d.round_trips(inner) / n,
        "commands_per_task": d.total_commands() / n,
        "evalsha_per_task": d.calls("evalsha") / n,
        "blpop_per_task": d.calls("blpop") / n,
        "redis_exec_us_per_task": d.executing_usec(inner) / n,
        "redis_cpu_us_per_task": d.redis_cpu_s * 1e6 / n,
        "python_cpu_us_per_task": d.python_cpu_s * 1e6 / n,
        "redis_cpu_share": d.redis_cpu_s / d.wall_s,
        "python_cpu_share": d.python_cpu_s / d.wall_s,
        "calls": {name: calls for name, (calls, _) in sorted(d.commands.items())},
    }
    if profiler:
        figures["profile_text"] = profiler.output_text(unicode=True, color=False)
        figures["profile_html"] = profiler.output_html()
    return figures


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: .venv/bin/pip install -e '.[bench]'")
    # Samples the whole thread, event loop included, not one coroutine's await chain.
    return Profiler(interval=0.0005, async_mode="disabled")


async def latency(url: str, cfg: Config) -> dict[str, float]:
    """A steady ``cfg.latency_rate`` adds/s for ``cfg.latency_s`` against idle, waiting workers;
    each task's latency is from its ``add`` returning to its handler starting (same process)."""
    s = settings(url)
    aq = AffinityQueue(s)
    n = int(cfg.latency_rate * cfg.latency_s)
    added = [0.0] * n
    started = [0.0] * n
    done = asyncio.Event()
    seen = 0

    @aq.handler("noop")
    async def noop(payload: int) -> None:
        nonlocal seen
        started[payload] = time.perf_counter()
        seen += 1
        if seen == n:
            done.set()

    async with aq:
        q = aq.queue()

        async def ready() -> bool:
            stats = await q.get_queue_stats()
            idle = [w for w in stats.workers if w.status == "idle"]
            return stats.leader is not None and len(idle) == s.worker_count

        await until(ready, 10, "latency: workers did not come up")
        await asyncio.sleep(0.2)  # let every worker reach its blocking wait

        async def add(i: int) -> None:
            await q.add({"type": "noop", "identifyTag": f"tenant-{i % cfg.tags}", "payload": i})
            added[i] = time.perf_counter()

        adds = []
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / cfg.latency_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            adds.append(asyncio.create_task(add(i)))
        offered_s = time.perf_counter() - t0
        await asyncio.gather(*adds)
        await asyncio.wait_for(done.wait(), 60)
    ms = [(started[i] - added[i]) * 1000 for i in range(n)]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "offered_rate": n / offered_s,
        "started_before_add_returned": float(sum(1 for x in ms if x < 0)),
    }
