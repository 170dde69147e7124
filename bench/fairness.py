"""``python -m bench.fairness``: weighted shares, a cold tag's wait under a flood, rate limits,
and what weights cost at 1,000,000 pending tasks (issue 17).

Every workload runs the real runtime (``AffinityQueue``: scheduler and workers in this process)
against a private redis-server, except ``cost``, which drives the scripts the way the runtime does
and reads the server's own time per call, as the W5 placement bench does.

- ``shares``: 3 tags of weights 1, 2, 3, each with a backlog far larger than the run, on 1 worker
  and on 4 (every tag allowed on every worker), and 15 tags (5 of each weight, concurrency 1) on
  4 workers; the tasks started per weight over the run and in every window of 100 batches,
  against 1:2:3.
- ``flood``: one tag with 100,000 tasks (weight 1, allowed on every worker), 1,000 cold tags of
  5 tasks each arriving during it; each cold task's wait (added to started, Redis time): p50,
  p99, max, against the issue's bound 2 x (cold work / workers) + one handler time and the
  README's.
- ``rate``: a tag limited to 50 tasks/s beside two unlimited tags: its start rate, and what the
  others got meanwhile.
- ``cost``: dispatch and advance (a worker runs its batch and gives the tag up, which computes the
  turn) at 1,000,000 pending over 10,000 tags: weights off, weights on every tag (0.5, 2, 3), and
  weights plus rate limits (too high to bind) on every tag, taking turns on one backlog; jobs/s
  and Redis µs per job; ratios on / off.

    python -m bench.fairness                  # everything, about 4 minutes
    python -m bench.fairness --only shares,rate
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from affinity_queue import AffinityQueue, JobContext, QueueSettings
from affinity_queue.keys import QueueKeys, tag_id
from affinity_queue.lua import Scripts, TermConfig
from affinity_queue.scheduler import DISPATCH_BUDGET

from .core.placement import LONG_LEASE_MS, fill
from .env import machine_info, private_redis
from .report import num, results_path, table, update_section, write_json
from .stats import percentile

WORKLOADS = ("shares", "flood", "rate", "cost")
WORKERS = 4
BATCH = 10
HANDLER_S = 0.001


def _say(what: str) -> None:
    print(f"fairness: {what}", file=sys.stderr, flush=True)


def _settings(url: str, **values: Any) -> QueueSettings:
    name = f"fair-{secrets.token_hex(4)}"
    defaults: dict[str, Any] = {"worker_count": WORKERS, "max_batch_size": BATCH}
    return QueueSettings(
        redis_url=url,
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
        scheduler_interval_ms=1000,
        **(defaults | values),
    )


async def _backlogs(aq: AffinityQueue, tags: list[str], per_tag: int) -> None:
    """``per_tag`` tasks of each tag, added in turns of 1,000 so no tag starts far ahead."""
    for lo in range(0, per_tag, 1000):
        for tag in tags:
            n = min(1000, per_tag - lo)
            await aq.queue().add_bulk({"type": "t", "identifyTag": tag} for _ in range(n))


async def shares(url: str, batches: int, workers: int, per_weight: int = 1) -> dict[str, Any]:
    """Tags of weights 1, 2 and 3 (``per_weight`` of each; one tag may use every worker when
    there is one of each, else one worker); the tasks started per weight."""
    weights = {"w1": 1, "w2": 2, "w3": 3}
    tags = {f"{c}-{i}": w for c, w in weights.items() for i in range(per_weight)}
    aq = AffinityQueue(
        _settings(
            url,
            identify_tag_weight=tags,
            identify_tag_concurrency=workers if per_weight == 1 else 1,
            worker_count=workers,
        )
    )
    started: list[str] = []
    enough = asyncio.Event()

    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> None:
        started.append(ctx.identify_tag.partition("-")[0])
        if len(started) >= batches * BATCH:
            enough.set()
        await asyncio.sleep(HANDLER_S)

    await _backlogs(aq, list(tags), 2 * batches * BATCH // per_weight)
    async with aq:
        await asyncio.wait_for(enough.wait(), 600)
    run = started[: batches * BATCH]
    total_w = sum(weights.values())

    def deviations(part: list[str]) -> dict[str, float]:
        counts = Counter(part)
        return {
            t: counts[t] / (len(part) * w / total_w) - 1 for t, w in weights.items()
        }  # fmt: skip

    window = 100 * BATCH
    windows = [deviations(run[lo : lo + window]) for lo in range(0, len(run), window)]
    return {
        "workers": workers,
        "tags_per_weight": per_weight,
        "max_batch_size": BATCH,
        "batches": batches,
        "weights": weights,
        "tasks_started": dict(Counter(run)),
        "overall_deviation": deviations(run),
        "windows": len(windows),
        "worst_window_deviation": max(abs(d) for w in windows for d in w.values()),
        "window_deviations": [max(abs(d) for d in w.values()) for w in windows],
        "worst_overall_deviation": max(abs(d) for d in deviations(run).values()),
    }


async def flood(url: str, flood_tasks: int, cold_tags: int, cold_each: int) -> dict[str, Any]:
    aq = AffinityQueue(_settings(url, identify_tag_concurrency={"default": 1, "flood": WORKERS}))
    cold_ids: list[str] = []
    flood_started = 0
    cold_done = 0
    all_done = asyncio.Event()
    cold_total = cold_tags * cold_each

    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> None:
        nonlocal flood_started, cold_done
        await asyncio.sleep(HANDLER_S)
        if ctx.identify_tag == "flood":
            flood_started += 1
        else:
            cold_done += 1
            if cold_done == cold_total:
                all_done.set()

    await _backlogs(aq, ["flood"], flood_tasks)
    q = aq.queue()
    async with aq:
        while flood_started < 2000:  # noqa: ASYNC110 (the flood at full speed on every worker)
            await asyncio.sleep(0.01)
        t0, f0 = time.monotonic(), flood_started
        spread_s = 2.0
        for i in range(cold_tags):  # arriving evenly over spread_s
            jobs = await q.add_bulk(
                {"type": "t", "identifyTag": f"cold-{i}"} for _ in range(cold_each)
            )
            cold_ids += [j.id for j in jobs]
            await asyncio.sleep(max(0.0, t0 + spread_s * (i + 1) / cold_tags - time.monotonic()))
        await asyncio.wait_for(all_done.wait(), 600)
        elapsed = time.monotonic() - t0
        flood_during = flood_started - f0
        records = await q.get_jobs(cold_ids)
    waits = [
        (j.started_at - j.created_at).total_seconds()
        for j in records
        if j.started_at and j.created_at
    ]
    # One task's cost on a worker, as the run measured it (handler, advance, placement).
    task_s = elapsed * WORKERS / (flood_during + cold_total)
    issue_bound = 2 * (cold_total * task_s / WORKERS) + task_s
    # README (Fairness): h x (B + (Q + F x B) / W) + (k - 1) x h, Q = every cold task (the worst
    # case: all arrived before), F = the flood's batches ahead: one (one flooded tag).
    readme_bound = task_s * (BATCH + (cold_total + BATCH) / WORKERS + cold_each - 1)
    return {
        "workers": WORKERS,
        "max_batch_size": BATCH,
        "flood_tasks": flood_tasks,
        "cold_tags": cold_tags,
        "cold_tasks_each": cold_each,
        "arrival_spread_s": spread_s,
        "task_s": task_s,
        "flood_tasks_started_meanwhile": flood_during,
        "cold_waits": len(waits),
        "p50_s": percentile(waits, 50),
        "p99_s": percentile(waits, 99),
        "max_s": max(waits),
        "issue_bound_s": issue_bound,
        "readme_bound_s": readme_bound,
    }


async def rate(url: str, run_s: float, limit: float) -> dict[str, Any]:
    aq = AffinityQueue(
        _settings(url, identify_tag_rate={"limited": limit}, identify_tag_concurrency=WORKERS)
    )
    starts: dict[str, list[float]] = {"limited": [], "busy-1": [], "busy-2": []}

    @aq.handler("t")
    async def handle(payload: Any, ctx: JobContext) -> None:
        starts[ctx.identify_tag].append(time.monotonic())
        await asyncio.sleep(HANDLER_S)

    await _backlogs(aq, ["limited"], int(limit * run_s * 2))
    await _backlogs(aq, ["busy-1", "busy-2"], 40_000)
    async with aq:
        await asyncio.sleep(run_s + 1)
    lim = starts["limited"]
    lo, hi = lim[0] + 1.0, lim[0] + 1.0 + run_s  # past the first bucketful
    measured = sum(lo <= t < hi for t in lim) / run_s
    others = sum(lo <= t < hi for tag in ("busy-1", "busy-2") for t in starts[tag]) / run_s
    return {
        "workers": WORKERS,
        "limit_per_s": limit,
        "window_s": run_s,
        "limited_started_per_s": measured,
        "deviation": measured / limit - 1,
        "others_started_per_s": others,
    }


async def cost(
    url: str, admin: Redis, pending: int, tags: int, cycles: int, runs: int
) -> dict[str, Any]:
    """One backlog; the variants take turns, ``runs`` times each (a new term installs each
    variant's settings), so a neighbour's load on the shared machine spreads over all of them."""
    tag_ids = [tag_id(f"tenant-{t}") for t in range(tags)]
    weights = {t: (0.5, 2.0, 3.0)[i % 3] for i, t in enumerate(tag_ids)}
    variants: dict[str, dict[str, Any]] = {
        "off": {},
        "weights": {"weights": weights},
        "weights+rates": {"weights": weights, "rates": dict.fromkeys(tag_ids, 1e6)},
    }
    name = f"cost-{secrets.token_hex(4)}"
    redis = Redis.from_url(url, decode_responses=True)
    scripts = Scripts(redis, QueueKeys(name, f"{name}-wq", f"{name}-ws"), name)
    series: dict[str, dict[str, list[float]]] = {
        v: {"jobs_per_s": [], "redis_us_per_job": []} for v in variants
    }
    try:
        _say(f"cost: filling {pending:,} pending over {tags:,} tags")
        await fill(scripts, pending, tags)
        workers = [f"w{i}" for i in range(DISPATCH_BUDGET // BATCH)]
        for w in workers:
            await scripts.register(w, LONG_LEASE_MS, "host", 1, "bench")
        for run in range(runs):
            for variant, extra in variants.items():
                _say(f"cost: run {run + 1}/{runs}, {variant}")
                fence = await scripts.elect(
                    "bench", LONG_LEASE_MS, "bench", "host", 1, TermConfig(BATCH, **extra)
                )
                rate, us = await _cycles(scripts, admin, fence, workers, cycles)
                series[variant]["jobs_per_s"].append(rate)
                series[variant]["redis_us_per_job"].append(us)
    finally:
        await redis.aclose()
    out: dict[str, Any] = {"pending": pending, "tags": tags, "cycles": cycles, "runs": runs}
    for variant, figures in series.items():
        out[variant] = {k: statistics.median(v) for k, v in figures.items()}
        out[variant]["runs"] = figures
    for variant in ("weights", "weights+rates"):
        out[variant]["ratio_jobs_per_s"] = out[variant]["jobs_per_s"] / out["off"]["jobs_per_s"]
        out[variant]["ratio_redis_us"] = (
            out["off"]["redis_us_per_job"] / out[variant]["redis_us_per_job"]
        )
    return out


async def _script_usec(admin: Redis) -> int:
    return int((await admin.info("commandstats"))["cmdstat_evalsha"]["usec"])


async def _cycles(
    scripts: Scripts, admin: Redis, fence: int, workers: list[str], cycles: int
) -> tuple[float, float]:
    """Each cycle: one dispatch call places a batch on each idle worker, then each worker runs
    its batch through ``advance`` and gives the tag up (the turn is computed there). Returns the
    median cycle's jobs/s and the Redis µs per job."""

    async def run(w: str) -> None:
        job = await scripts.advance(w, "", "", "", True)
        while job is not None:
            job = await scripts.advance(w, job.id, "completed", "null", True)

    rates: list[float] = []
    usec = jobs = 0
    for _ in range(cycles):
        before = await _script_usec(admin)
        t = time.perf_counter()
        placed, _, _ = await scripts.dispatch(fence, DISPATCH_BUDGET)
        await asyncio.gather(*(run(w) for w in workers))
        rates.append(placed / (time.perf_counter() - t))
        usec += await _script_usec(admin) - before
        jobs += placed
    return statistics.median(rates), usec / jobs


async def main(only: set[str], quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"workloads": sorted(only), "quick": quick}
    with private_redis() as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        try:
            out["machine"] = await machine_info(admin)
            if "shares" in only:
                _say("shares")
                batches = 300 if quick else 1200
                out["shares"] = [
                    await shares(server.url, batches, w, n)
                    for w, n in ((1, 1), (WORKERS, 1), (WORKERS, 5))
                ]
            if "flood" in only:
                _say("flood")
                out["flood"] = await flood(server.url, 100_000, 1000, 5)
            if "rate" in only:
                _say("rate")
                out["rate"] = await rate(server.url, 3.0 if quick else 10.0, 50.0)
            if "cost" in only:
                pending = 100_000 if quick else 1_000_000
                out["cost"] = await cost(server.url, admin, pending, 10_000, 100, 3 if quick else 5)
        finally:
            await admin.aclose()
    return out


def markdown(r: dict[str, Any]) -> str:
    parts = ["## Fairness (`python -m bench.fairness`, issue 17)", ""]
    m = r["machine"]
    parts.append(
        f"{m['nproc']} cores, Python {m['python']}, Redis {m['redis_server']}; "
        f"{WORKERS} workers in one process, MAX_BATCH_SIZE={BATCH}, handlers sleep "
        f"{HANDLER_S * 1000:g} ms."
    )
    for s in r.get("shares", []):
        rows = [
            [t, str(w), num(s["tasks_started"].get(t, 0)), f"{s['overall_deviation'][t]:+.1%}"]
            for t, w in s["weights"].items()
        ]
        parts += [
            "",
            f"**Shares**, {s['workers']} worker(s), {s['tags_per_weight']} tag(s) of each weight "
            + (
                "(each allowed on every worker)"
                if s["tags_per_weight"] == 1
                else "(concurrency 1), tasks counted per weight"
            )
            + f", over {num(s['batches'])} batches:",
            "",
            table(["tags", "weight", "tasks started", "vs their share"], rows),
            "",
            f"Worst over the run: {s['worst_overall_deviation']:.1%} (target 5 %); worst tag "
            f"in any of the {s['windows']} windows of 100 batches: "
            f"{s['worst_window_deviation']:.1%} (target 15 %), window by window: "
            + ", ".join(f"{d:.0%}" for d in s["window_deviations"])
            + ".",
        ]
    if f := r.get("flood"):
        parts += [
            "",
            f"**Flood**: {num(f['flood_tasks'])} tasks of one tag (weight 1, allowed on every "
            f"worker), {num(f['cold_tags'])} cold tags of {f['cold_tasks_each']} tasks arriving "
            f"over {f['arrival_spread_s']:g} s during it; {num(f['flood_tasks_started_meanwhile'])}"
            f" flood tasks started meanwhile; one task took {f['task_s'] * 1000:.2f} ms of a "
            "worker.",
            "",
            table(
                ["cold-task wait p50", "p99", "max", "issue's bound", "README's bound"],
                [
                    [
                        f"{f['p50_s'] * 1000:.1f} ms",
                        f"{f['p99_s'] * 1000:.1f} ms",
                        f"{f['max_s'] * 1000:.1f} ms",
                        f"{f['issue_bound_s'] * 1000:.0f} ms",
                        f"{f['readme_bound_s'] * 1000:.0f} ms",
                    ]
                ],
            ),
        ]
    if x := r.get("rate"):
        parts += [
            "",
            f"**Rate limit** {x['limit_per_s']:g}/s on one tag beside two unlimited ones, over "
            f"{x['window_s']:g} s: it started {x['limited_started_per_s']:.1f}/s "
            f"({x['deviation']:+.1%}); the others {num(x['others_started_per_s'])}/s meanwhile.",
        ]
    if c := r.get("cost"):
        rows = [
            [
                v,
                num(c[v]["jobs_per_s"]),
                f"{c[v].get('ratio_jobs_per_s', 1.0):.2f}",
                f"{c[v]['redis_us_per_job']:.1f}",
                f"{c[v].get('ratio_redis_us', 1.0):.2f}",
            ]
            for v in ("off", "weights", "weights+rates")
        ]
        parts += [
            "",
            f"**Cost** at {num(c['pending'])} pending over {num(c['tags'])} tags: dispatch, then "
            "each worker runs its batch and gives the tag up (where the turn is computed), "
            f"{num(c['cycles'])} cycles of {DISPATCH_BUDGET} jobs per run, the variants in turn, "
            f"median of {c['runs']} runs:",
            "",
            table(["variant", "jobs/s", "ratio", "Redis µs/job", "ratio (off / on)"], rows),
        ]
    return "\n".join(parts) + "\n"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--quick", action="store_true", help="smaller runs, to try it out")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    result = asyncio.run(main(only, args.quick))
    print(markdown(result))
    if not args.quick and only == set(WORKLOADS):
        write_json(results_path("fairness"), result)
        update_section("fairness", markdown(result))


if __name__ == "__main__":
    cli()
