"""The core's section of ``docs/benchmarks.md``, rendered from the run's JSON."""

from __future__ import annotations

import math
from typing import Any

from ..report import num, table


class _Figures:
    def __init__(self, figures: dict[str, Any]) -> None:
        self._f = figures

    def __contains__(self, key: str) -> bool:
        return key in self._f

    def med(self, key: str) -> float:
        return float(self._f[key]["median"]) if key in self._f else math.nan

    def runs(self, key: str, digits: int = 0) -> str:
        if key not in self._f:
            return "—"
        return " / ".join(num(x, digits) for x in self._f[key]["runs"])

    def row(self, label: str, key: str, digits: int = 0, *, share: bool = False) -> list[str]:
        median = f"{self.med(key):.0%}" if share else num(self.med(key), digits)
        return [label, median, self.runs(key, 2 if share else digits)]


def markdown(data: dict[str, Any]) -> str:
    f = _Figures(data["figures"])
    m, cfg = data["machine"], data["settings"]
    lines = [
        "## Core engine",
        "",
        f"`.venv/bin/python {data['command'].removeprefix('python ')}` · {data['started_at']} · "
        f"median of {cfg['runs']} run(s); each run's figure is in the last column.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), load average {m['load_avg_at_start']} at "
        f"start, {m.get('load_avg_at_end', '?')} at the end (other work on the machine shows "
        f"there); Python {m['python']}, event loop {m.get('event_loop', 'asyncio')}; Redis "
        f"{m['redis_server']} (private, loopback, no persistence); redis-py {m['redis_py']}, "
        f"hiredis {m['hiredis']}.",
        "",
        f"Settings: {cfg['worker_count']} workers in one process (`WORKER_COUNT="
        f"{cfg['worker_count']}`, `APP_ROLE=BOTH`), `MAX_BATCH_SIZE={cfg['max_batch_size']}`, "
        f"per-tag concurrency 1, an async no-op handler; {cfg['tasks']:,} tasks dealt "
        f"round-robin over {cfg['tags']:,} tags. Adds are measured with no worker running.",
        "",
    ]
    if throughput := _throughput(f, cfg):
        lines += throughput
    if "drain.round_trips_per_task" in f:
        lines += ["", *_drain(f, data.get("drain_script_calls_per_task", {}))]
    if "latency.p50_ms" in f:
        lines += [
            "",
            f"### Latency: {cfg['latency_rate']} tasks/s for {cfg['latency_s']:g} s, idle "
            "workers waiting",
            "",
            table(
                ["`add` returned → handler started", "median", "runs"],
                [
                    f.row("p50, ms", "latency.p50_ms", 2),
                    f.row("p99, ms", "latency.p99_ms", 2),
                    f.row("max, ms", "latency.max_ms", 2),
                ],
            ),
        ]
    if "placement" in data:
        lines += ["", *_placement(data["placement"], cfg)]
    return "\n".join(lines) + "\n"


def _throughput(f: _Figures, cfg: dict[str, Any]) -> list[str]:
    rt1, rt20 = f.med("baseline.evalsha_1"), f.med("baseline.evalsha_20")
    rows = []
    for key, label in (
        ("baseline.ping_1", "redis-py PING, 1 coroutine"),
        ("baseline.ping_20", "redis-py PING, 20 coroutines"),
        ("baseline.evalsha_1", "redis-py EVALSHA `return 1`, 1 coroutine"),
        ("baseline.evalsha_20", "redis-py EVALSHA `return 1`, 20 coroutines"),
    ):
        if key in f:
            rows.append([label, num(f.med(key)), "round trips/s", "", f.runs(key)])
    for key, label, base in (
        ("add.one_by_one", "add, one by one (awaited)", rt1),
        ("add.concurrent", f"add, {cfg['inflight']} in flight", rt20),
        ("add.bulk", "add_bulk", rt20),
        ("drain.tasks_per_s", "drain (start → all completed)", rt20),
    ):
        if key in f:
            ratio = "—" if math.isnan(base) else f"{f.med(key) / base:.2f}"
            rows.append([label, num(f.med(key)), "tasks/s", ratio, f.runs(key)])
    if not rows:
        return []
    return [
        "### Throughput",
        "",
        table(["measure", "median", "unit", "÷ EVALSHA rate", "runs"], rows),
        "",
        "The ratio divides by redis-py's rate for a trivial EVALSHA in the same run, from 1 "
        "coroutine (one by one) or 20 (the others): 1.00 would be one script round trip per "
        "task at redis-py's own speed.",
    ]


def _drain(f: _Figures, by_script: dict[str, float]) -> list[str]:
    rows = [
        f.row("client round trips", "drain.round_trips_per_task", 2),
        f.row("  of which EVALSHA", "drain.evalsha_per_task", 2),
        f.row("  of which BLPOP (wake-ups)", "drain.blpop_per_task", 2),
        f.row("Redis commands, including those inside scripts", "drain.commands_per_task", 1),
        f.row("Redis executing time, µs", "drain.redis_exec_us_per_task", 1),
        f.row("Redis CPU, µs", "drain.redis_cpu_us_per_task", 1),
        f.row("Python CPU of this process, µs", "drain.python_cpu_us_per_task", 1),
        f.row("Redis CPU busy, share of wall time", "drain.redis_cpu_share", share=True),
        f.row("Python CPU busy, share of wall time", "drain.python_cpu_share", share=True),
    ]
    lines = [
        "### Drain: where a task's cost goes",
        "",
        table(["per completed task", "median", "runs"], rows),
        "",
        "From `INFO commandstats` and CPU counters over the drain, start-up included. Redis "
        "counts the commands a script runs like those a client sends; calls of the commands our "
        "scripts use are counted as the scripts' inner work, all others as client round trips.",
    ]
    if by_script:
        calls = ", ".join(f"`{k}` {v:.3f}" for k, v in by_script.items())
        lines += ["", f"Script calls per task (one extra run, counted by name): {calls}."]
    return lines


def _placement(variants: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    by_pending = [v for v in variants if v["axis"] == "backlog"]
    by_tags = [v for v in variants if v["axis"] == "tags"]
    lines = [
        "### Placement rate: does its cost grow with the backlog or the number of tags?",
        "",
        f"The `dispatch` script called directly: each timed call is offered "
        f"{cfg['placement_workers']} idle workers and places a whole batch of "
        f"{cfg['max_batch_size']} on each; then the workers hand their jobs back, so the backlog "
        f"is the same before every call; {cfg['placement_placed']:,} jobs placed per run. Every "
        "tag holds more than one batch, so no visit empties a tag. The ratios are to the first "
        "row (flat means ≥ 0.8); with fewer tags than workers, a tag binds several workers.",
    ]
    header = [
        "pending",
        "tags",
        "workers per tag",
        "placed/s (wall)",
        "ratio",
        "Redis µs per job",
        "ratio",
        "Redis bytes per pending job",
    ]
    for group, axis in ((by_pending, "backlog size"), (by_tags, "number of tags")):
        if not group:
            continue
        rate0 = group[0]["placed_per_s"]["median"]
        us0 = group[0]["redis_us_per_placed_job"]["median"]
        rows = [
            [
                num(v["pending"]),
                num(v["tags"]),
                str(v["per_tag_concurrency"]),
                num(v["placed_per_s"]["median"]),
                f"{v['placed_per_s']['median'] / rate0:.2f}",
                num(v["redis_us_per_placed_job"]["median"], 2),
                f"{us0 / v['redis_us_per_placed_job']['median']:.2f}",
                num(v["bytes_per_pending_job"]),
            ]
            for v in group
        ]
        lines += ["", f"By {axis}:", "", table(header, rows)]
    return lines
