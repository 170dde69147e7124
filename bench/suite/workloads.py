"""W1-W4 for any system through its adapter, and W6 for ours; one call is one measurement."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from dataclasses import dataclass, field
from itertools import count, pairwise
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from ..env import Snapshot
from ..peers import OURS, NotSupportedError, System
from ..peers.affinity import MAX_BATCH_ENV
from ..peers.affinity import Adapter as Ours
from ..peers.probe import PROBE_ENV, ProbeReader
from ..peers.process import WorkerGroup
from ..stats import percentile
from . import Config

POLL_S = 0.005
START_TIMEOUT_S = 60.0
"""How long a worker may take to start and run its first task."""
PROBES = frozenset({"info"})
"""The suite's own commands inside measured windows, left out of the counts."""


@dataclass
class Bench:
    """What every measurement needs: the private server, a scratch directory, the sizes."""

    url: str
    admin: Redis
    tmp: Path
    cfg: Config
    inner: frozenset[str]
    """Commands our Lua scripts call: inside a script they are not round trips."""
    _n: count[int] = field(default_factory=count)

    async def fresh(self, system: System | None = None) -> None:
        await self.admin.flushall()  # a private server: every measurement starts from nothing
        gc.collect()
        if system is not None:
            await system.reset()

    def probe(self) -> tuple[dict[str, str], ProbeReader]:
        path = self.tmp / f"probe-{next(self._n)}.txt"
        return {PROBE_ENV: str(path)}, ProbeReader(str(path))

    def spawn(self, system: System, processes: int, env: dict[str, str]) -> WorkerGroup:
        commands = [system.worker_command(k) for k in range(processes)]
        return WorkerGroup.spawn(commands, env, self.tmp)


async def wait_for(
    reader: ProbeReader, group: WorkerGroup, want: int, *, cap_s: float, warmup: bool = False
) -> bool:
    """Until ``want`` tasks ran (True), or ``cap_s`` after one was first seen (False); raises
    when no task runs within START_TIMEOUT_S or a worker process dies."""
    start_deadline = time.monotonic() + START_TIMEOUT_S
    cap_deadline: float | None = None
    while True:
        reader.poll()
        got = reader.warmups if warmup else reader.measured
        if got >= want:
            return True
        now = time.monotonic()
        if got and cap_deadline is None:
            cap_deadline = now + cap_s
        if cap_deadline is not None and now > cap_deadline:
            return False
        group.check_alive()
        if cap_deadline is None and now > start_deadline:
            raise TimeoutError(f"no task ran within {START_TIMEOUT_S:.0f} s of the start")
        await asyncio.sleep(POLL_S)


async def warm_up(bench: Bench, system: System, reader: ProbeReader, group: WorkerGroup) -> None:
    ids = [-1 - k for k in range(bench.cfg.warmup)]
    await system.add_one_by_one(ids, math.inf)
    if not await wait_for(reader, group, len(ids), cap_s=START_TIMEOUT_S, warmup=True):
        raise TimeoutError(f"{system.name}: warm-up tasks did not all run")
    await asyncio.sleep(0.5)  # every worker back to its idle wait


# -- W1 ---------------------------------------------------------------------------------------
async def enqueue(bench: Bench, system: System, how: str) -> dict[str, Any]:
    """``how``: ``one_by_one``, ``concurrent`` or ``bulk``; no worker runs. Leaves the tasks
    queued (the drain that follows runs them). Raises NotSupportedError for a missing bulk."""
    cfg = bench.cfg
    ids = range(cfg.tasks)
    deadline = time.monotonic() + cfg.cap_s
    before = await Snapshot.take(bench.admin)
    start = time.perf_counter()
    if how == "one_by_one":
        done = await system.add_one_by_one(ids, deadline)
    elif how == "concurrent":
        done = await system.add_concurrently(ids, cfg.inflight, deadline)
    else:
        await system.add_bulk(ids)
        done = len(ids)
    elapsed_s = time.perf_counter() - start
    d = (await Snapshot.take(bench.admin)).since(before, ignore=PROBES)
    return {
        "tasks_per_s": done / elapsed_s,
        "tasks": done,
        "capped": done < len(ids),
        "elapsed_s": elapsed_s,
        "commands_per_task": d.total_commands() / done,
        "round_trips_per_task": d.round_trips(bench.inner) / done if system.name == OURS else None,
        "redis_cpu_us_per_task": d.redis_cpu_s * 1e6 / done,
    }


# -- W2 ---------------------------------------------------------------------------------------
async def drain(bench: Bench, system: System, queued: int, processes: int) -> dict[str, Any]:
    """``queued`` tasks (ids 0..queued-1) are in the queue; start the workers and time them.

    The rate is from the first task starting to the last one finishing, so that the systems'
    start-up (imports, connections: 0.2-2 s) is not counted; the Redis counters cover the
    whole window from the workers' start.
    """
    env, reader = bench.probe()
    before = await Snapshot.take(bench.admin)
    spawned = time.monotonic()
    group = bench.spawn(system, processes, env)
    try:
        await wait_for(reader, group, 1, cap_s=math.inf)
        cpu_at_first = group.cpu_s()
        complete = await wait_for(reader, group, queued, cap_s=bench.cfg.cap_s)
        cpu_s = group.cpu_s() - cpu_at_first
        after = await Snapshot.take(bench.admin)
    finally:
        stopping = time.monotonic()
        await group.stop()
    d = after.since(before, ignore=PROBES)
    done = reader.measured
    first = min(reader.starts.values())
    last = max(reader.ends.values())
    figures: dict[str, Any] = {
        "tasks_per_s": done / (last - first),
        "tasks": done,
        "queued": queued,
        "capped": not complete,
        "processes": processes,
        "startup_s": first - spawned,
        "stop_s": time.monotonic() - stopping,
        "duplicates": reader.duplicates,
        "worker_cpu_us_per_task": cpu_s * 1e6 / done,
        "commands_per_task": d.total_commands() / done,
        "eval_per_task": (d.calls("evalsha") + d.calls("eval")) / done,
        "redis_cpu_us_per_task": d.redis_cpu_s * 1e6 / done,
        "redis_cpu_share": d.redis_cpu_s / d.wall_s,
        "calls": {name: calls for name, (calls, _) in sorted(d.commands.items())},
        "usec": {name: usec for name, (_, usec) in sorted(d.commands.items())},
    }
    if system.name == OURS:
        figures["round_trips_per_task"] = d.round_trips(bench.inner) / done
    return figures


# -- W3 ---------------------------------------------------------------------------------------
async def latency(bench: Bench, system: System) -> dict[str, Any]:
    """A steady rate against idle workers: from the enqueue call returning to the task starting
    (the issue's measure), and from the call itself. A task runs in another process, so it
    may start before its enqueue call has returned in ours: a negative latency. Tasks that had
    not started ``cap_s`` after the last enqueue count as infinitely late."""
    cfg = bench.cfg
    n = int(cfg.latency_rate * cfg.latency_s)
    env, reader = bench.probe()
    group = bench.spawn(system, 1, env)
    called, added = [math.nan] * n, [math.nan] * n
    try:
        await warm_up(bench, system, reader, group)
        offered_s = await system.add_paced(range(n), cfg.latency_rate, called, added)
        complete = await wait_for(reader, group, n, cap_s=cfg.cap_s)
    finally:
        await group.stop()
    starts = [reader.starts.get(i, math.inf) for i in range(n)]
    ms = [(s - a) * 1000 for s, a in zip(starts, added, strict=True)]
    from_call_ms = [(s - c) * 1000 for s, c in zip(starts, called, strict=True)]
    enqueue_ms = [(a - c) * 1000 for a, c in zip(added, called, strict=True)]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "from_call_p50_ms": percentile(from_call_ms, 50),
        "from_call_p99_ms": percentile(from_call_ms, 99),
        "from_call_max_ms": max(from_call_ms),
        "enqueue_p50_ms": percentile(enqueue_ms, 50),
        "tasks": n,
        "not_started": sum(1 for x in ms if x == math.inf),
        "capped": not complete,
        "offered_rate": n / offered_s,
        "started_before_add_returned": sum(1 for x in ms if x < 0),
    }


# -- W4 ---------------------------------------------------------------------------------------
async def keyed(bench: Bench, system: System) -> dict[str, Any]:
    """``keyed_chains`` chains of ``keyed_length`` tasks, interleaved (task ``seq * chains +
    chain``), all queued before the workers start; every chain must run in order, one task at
    a time. Raises NotSupportedError for a system without a native mechanism."""
    cfg = bench.cfg
    chains = [
        [seq * cfg.keyed_chains + c for seq in range(cfg.keyed_length)]
        for c in range(cfg.keyed_chains)
    ]
    n = cfg.keyed_chains * cfg.keyed_length
    await system.add_keyed(chains)
    env, reader = bench.probe()
    group = bench.spawn(system, 1, env)
    try:
        complete = await wait_for(reader, group, n, cap_s=bench.cfg.cap_s)
    finally:
        await group.stop()
    out_of_order = overlaps = 0
    for chain in chains:
        ran = [i for i in chain if i in reader.starts]
        # a later task that ran while an earlier one did not also breaks the order
        out_of_order += ran != list(chain[: len(ran)])
        for a, b in pairwise(ran):
            out_of_order += reader.starts[b] < reader.starts[a]
            overlaps += reader.starts[b] < reader.ends[a]
    done = reader.measured
    first = min(reader.starts.values())
    last = max(reader.ends.values())
    return {
        "tasks_per_s": done / (last - first),
        "tasks": done,
        "capped": not complete,
        "out_of_order": out_of_order,
        "overlaps": overlaps,
        "duplicates": reader.duplicates,
    }


async def not_supported(call: Any) -> dict[str, Any]:
    try:
        return dict(await call)
    except NotSupportedError as e:
        return {"not_supported": str(e)}


# -- W6 (ours) --------------------------------------------------------------------------------
async def hot_tag(bench: Bench, ours: Ours, *, batch: bool = False) -> dict[str, Any]:
    """Idle workers; then one ``add_bulk`` of ``hot_tasks`` tasks for one tag, and one of
    ``cold_tags`` x ``cold_per_tag`` tasks dealt over the cold tags. A cold task's wait is from
    the cold ``add_bulk`` call to its start: a FIFO queue would run it after every hot task.
    ``batch``: the hot tasks go to the ``noop_batch`` batch handler, with MAX_BATCH_SIZE
    ``hot_batch_binding`` (a worker holds the hot tag that long)."""
    cfg = bench.cfg
    kind = "noop_batch" if batch else "noop"
    hot = [{"type": kind, "identifyTag": "hot", "payload": i} for i in range(cfg.hot_tasks)]
    n_cold = cfg.cold_tags * cfg.cold_per_tag
    cold_ids = range(cfg.hot_tasks, cfg.hot_tasks + n_cold)
    cold = [
        {"type": "noop", "identifyTag": f"cold-{i % cfg.cold_tags}", "payload": i} for i in cold_ids
    ]
    env, reader = bench.probe()
    if batch:
        env[MAX_BATCH_ENV] = str(cfg.hot_batch_binding)
    group = bench.spawn(ours, 1, env)
    try:
        await warm_up(bench, ours, reader, group)
        hot_at = time.monotonic()
        await ours.queue.add_bulk(hot)
        cold_at = time.monotonic()
        await ours.queue.add_bulk(cold)
        complete = await wait_for(reader, group, len(hot) + n_cold, cap_s=bench.cfg.cap_s * 3)
    finally:
        await group.stop()
    waits = [(reader.starts[i] - cold_at) * 1000 for i in cold_ids if i in reader.starts]
    hot_ends = [reader.ends[i] for i in range(cfg.hot_tasks) if i in reader.ends]
    hot_first = min(reader.starts[i] for i in range(cfg.hot_tasks) if i in reader.starts)
    return {
        "cold_p50_ms": percentile(waits, 50),
        "cold_p99_ms": percentile(waits, 99),
        "cold_max_ms": max(waits),
        "cold_not_started": n_cold - len(waits),
        "hot_done_ms": (max(hot_ends) - hot_at) * 1000,
        "hot_rate": len(hot_ends) / (max(hot_ends) - hot_at),
        "hot_drain_rate": len(hot_ends) / (max(hot_ends) - hot_first),
        "capped": not complete,
    }
