"""The peers' section of ``docs/benchmarks.md``, rendered from the run's JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..peers import OURS
from ..peers.affinity import HOT_BATCH, MAX_BATCH
from ..report import num, table

X = "\u00d7"
"""The multiplication sign, for ratios."""


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    figure: str
    """``"<workload>.<field>"``, e.g. ``w2.1.tasks_per_s``: the last dot separates the field."""
    higher_is_better: bool = True
    digits: int = 0


COLUMNS = (
    Column("W1 one by one, tasks/s", "w1.one_by_one.tasks_per_s"),
    Column("W1 100 in flight, tasks/s", "w1.concurrent.tasks_per_s"),
    Column("W1 bulk, tasks/s", "w1.bulk.tasks_per_s"),
    Column("W2 drain, 1 process, tasks/s", "w2.1.tasks_per_s"),
    Column("W2 drain, 2 processes, tasks/s", "w2.2.tasks_per_s"),
    Column("W3 p50, ms", "w3.from_call_p50_ms", higher_is_better=False, digits=2),
    Column("W3 p99, ms", "w3.from_call_p99_ms", higher_is_better=False, digits=2),
    Column("W3 max, ms", "w3.from_call_max_ms", higher_is_better=False, digits=1),
    Column("W4 keyed, tasks/s", "w4.tasks_per_s"),
)


def _result(entry: dict[str, Any], figure: str) -> tuple[dict[str, Any] | None, str]:
    workload, field = figure.rsplit(".", 1)
    return entry.get("figures", {}).get(workload), field


def _value(entry: dict[str, Any], figure: str) -> float | None:
    result, field = _result(entry, figure)
    if result is None or field not in result:
        return None
    return float(result[field])


def _best_peer(systems: dict[str, Any], col: Column) -> float | None:
    values = [
        v
        for short, entry in systems.items()
        if short != OURS and (v := _value(entry, col.figure)) is not None and math.isfinite(v)
    ]
    if not values:
        return None
    return max(values) if col.higher_is_better else min(values)


def _cell(entry: dict[str, Any], col: Column, best: float | None) -> str:
    result, _ = _result(entry, col.figure)
    if result is None:
        return "error" if "error" in entry else "not run"
    if "not_supported" in result:
        return "not supported"
    if "not_run" in result:
        return "—²"
    value = _value(entry, col.figure)
    if value is None:
        return "?"
    if math.isinf(value):
        return "∞¹"  # tasks that never started within the cap
    text = num(value, col.digits)
    if result.get("capped"):
        text += "¹"
    if best is not None and best > 0 and value > 0:
        text += f" ({X}{value / best:.2f})"
    return text


def _main_table(systems: dict[str, Any]) -> str:
    header = ["system", *(c.header for c in COLUMNS)]
    bests = [_best_peer(systems, c) for c in COLUMNS]
    rows = []
    for short, entry in systems.items():
        name = f"**{entry['name']}**" if short == OURS else entry["name"]
        rows.append([name, *(_cell(entry, c, b) for c, b in zip(COLUMNS, bests, strict=True))])
    return table(header, rows)


def _systems_table(systems: dict[str, Any]) -> str:
    rows = []
    for entry in systems.values():
        if "versions" not in entry:  # not installed
            rows.append([entry["name"], entry.get("error", "?"), "—", "—", "—", "—"])
            continue
        versions = ", ".join(f"{k} {v}" for k, v in entry["versions"].items())
        rows.append(
            [
                entry["name"],
                versions,
                entry["processes"],
                entry["settings"],
                " / ".join(str(x) for x in entry["load_avg_at_start"]),
                num(entry["elapsed_s"]),
            ]
        )
    return table(
        ["system", "versions", "workers", "settings (defaults otherwise)", "load at start", "s"],
        rows,
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    return num(float(value), digits)


def _cost_table(systems: dict[str, Any]) -> str:
    rows = []
    for short, entry in systems.items():
        f = entry.get("figures", {})
        add, d = f.get("w1.one_by_one", {}), f.get("w2.1", {})
        rows.append(
            [
                entry["name"],
                _fmt(add.get("commands_per_task")),
                _fmt(d.get("commands_per_task")),
                _fmt(d.get("eval_per_task"), 2),
                _fmt(d.get("round_trips_per_task"), 2) if short == OURS else "—",
                _fmt(d.get("redis_cpu_us_per_task")),
                _fmt(d.get("worker_cpu_us_per_task")),
                f"{d['redis_cpu_share']:.0%}" if "redis_cpu_share" in d else "—",
                _fmt(d.get("duplicates"), 0),
            ]
        )
    return table(
        [
            "system",
            "enqueue: Redis commands",
            "drain: Redis commands",
            "drain: EVAL/EVALSHA",
            "drain: client round trips",
            "drain: Redis CPU, µs",
            "drain: worker CPU, µs",
            "Redis busy during drain",
            "tasks run twice",
        ],
        rows,
    )


def _keyed_table(systems: dict[str, Any]) -> str:
    rows = []
    for entry in systems.values():
        w4 = entry.get("figures", {}).get("w4")
        if w4 is None:
            continue
        if "not_supported" in w4:
            rows.append([entry["name"], "none", "—", "—", "—"])
            continue
        done = f"{w4['tasks']:,}" + (" (capped)" if w4["capped"] else "")
        rows.append(
            [entry["name"], entry["keyed"], done, str(w4["out_of_order"]), str(w4["overlaps"])]
        )
    return table(
        ["system", "mechanism", "tasks run", "out of order", "overlapping in a chain"], rows
    )


def _latency_table(systems: dict[str, Any]) -> str:
    rows = []
    for entry in systems.values():
        w3 = entry.get("figures", {}).get("w3")
        if w3 is None:
            continue
        rows.append(
            [
                entry["name"],
                num(w3["offered_rate"]),
                _fmt(w3["enqueue_p50_ms"], 2),
                _fmt(w3["p50_ms"], 2),
                _fmt(w3["p99_ms"], 2),
                _fmt(w3["max_ms"], 1),
                f"{w3['started_before_add_returned']:,}",
                f"{w3['not_started']:,}",
            ]
        )
    return table(
        [
            "system",
            "offered, tasks/s",
            "enqueue call, p50 ms",
            "from the return: p50, ms",
            "p99, ms",
            "max, ms",
            "started before the call returned",
            "not started in time",
        ],
        rows,
    )


def _placement(variants: list[dict[str, Any]]) -> list[str]:
    lines = []
    for axis, label in (("backlog", "backlog size"), ("tags", "number of tags")):
        group = [v for v in variants if v["axis"] == axis]
        if not group:
            continue
        rate0 = group[0]["placed_per_s"]["median"]
        us0 = group[0]["redis_us_per_placed_job"]["median"]
        rows = [
            [
                num(v["pending"]),
                num(v["tags"]),
                num(v["placed_per_s"]["median"]),
                f"{v['placed_per_s']['median'] / rate0:.2f}",
                num(v["redis_us_per_placed_job"]["median"], 2),
                f"{us0 / v['redis_us_per_placed_job']['median']:.2f}",
            ]
            for v in group
        ]
        header = ["pending", "tags", "placed/s", "ratio", "Redis µs per job", "ratio"]
        lines += ["", f"By {label}:", "", table(header, rows)]
    return lines


def _fifo_ms(cfg: dict[str, Any], ours: dict[str, Any]) -> str:
    rate = ours.get("w2.1", {}).get("tasks_per_s")
    return num(cfg["hot_tasks"] / rate * 1000) if rate else "—"


def _scale_table(ours: dict[str, Any]) -> str:
    rows = []
    for processes in (1, 2, 4):
        d = ours.get(f"w2.{processes}")
        if not d or "redis_cpu_us_per_task" not in d:
            continue
        cpu = d["redis_cpu_us_per_task"]
        rows.append(
            [
                str(processes),
                _fmt(d["tasks_per_s"], 0),
                _fmt(d.get("commands_per_task")),
                _fmt(cpu),
                f"{d['redis_cpu_share']:.0%}",
                _fmt(1e6 / cpu, 0) if cpu > 0 else "—",
            ]
        )
    return table(
        [
            "worker processes",
            "drain, tasks/s",
            "Redis commands per task",
            "Redis CPU per task, µs",
            "Redis busy",
            "projected ceiling per Redis core, tasks/s",
        ],
        rows,
    )


def _targets(data: dict[str, Any]) -> list[list[str]]:
    """Issue 14's targets, each against the best peer of the same run where it names one."""
    systems = data["systems"]
    ours = systems.get(OURS, {})
    rows: list[list[str]] = []

    def check(target: str, measured: str, ok: bool | None) -> None:
        rows.append([target, measured, "—" if ok is None else "met" if ok else "**missed**"])

    def against_best(figure: str, target: str, ratio: float) -> None:
        col = next(c for c in COLUMNS if c.figure == figure)
        best, value = _best_peer(systems, col), _value(ours, figure)
        if not best or value is None or not math.isfinite(value):
            return
        if col.higher_is_better:
            check(
                target,
                f"{num(value)} vs {num(best)}/s: {X}{value / best:.2f}",
                value >= ratio * best,
            )
        else:
            check(target, f"{value:.2f} vs {best:.2f} ms", value <= best)

    against_best("w2.1.tasks_per_s", f"W2, 1 process ≥ 4{X} the fastest peer", 4)
    against_best("w2.2.tasks_per_s", f"W2, 2 processes ≥ 3{X} the fastest peer", 3)
    against_best("w1.one_by_one.tasks_per_s", f"W1 one by one ≥ 1.0{X} the fastest peer", 1)
    against_best("w4.tasks_per_s", f"W4 keyed ≥ 12{X} the fastest peer", 12)
    against_best("w3.from_call_p50_ms", "W3 p50 (from the call) ≤ every peer's", 1)
    against_best("w3.from_call_p99_ms", "W3 p99 (from the call) ≤ every peer's", 1)
    if (bulk := _value(ours, "w1.bulk.tasks_per_s")) is not None:
        check("W1 bulk ≥ 60,000 tasks/s", f"{num(bulk)}/s", bulk >= 60_000)
    d = ours.get("figures", {}).get("w2.1", {})
    if "redis_cpu_us_per_task" in d:
        cpu, commands = d["redis_cpu_us_per_task"], d["commands_per_task"]
        check("Redis CPU per drained task ≤ 15 µs", f"{cpu:.1f} µs", cpu <= 15)
        check("Redis commands per drained task ≤ 12", f"{commands:.1f}", commands <= 12)
    if (hot := _value(ours, "w6.hot_rate")) is not None:
        check("one hot tag ≥ 10,000 tasks/s (per-task handler)", f"{num(hot)}/s", hot >= 10_000)
    if variants := [v for v in data.get("w5", []) if v["axis"] == "backlog"]:
        first, last = variants[0], variants[-1]
        ratio = last["placed_per_s"]["median"] / first["placed_per_s"]["median"]
        check(
            f"W5 rate at {num(last['pending'])} pending ≥ 0.8{X} at {num(first['pending'])}",
            f"{X}{ratio:.2f}",
            ratio >= 0.8,
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    m, cfg, systems = data["machine"], data["settings"], data["systems"]
    git = data.get("git", {})
    dirty = (
        " with uncommitted changes in `affinity_queue/`" if git.get("engine_uncommitted") else ""
    )
    runs = cfg.get("runs", 1)
    repeats = (
        f"median of {runs} runs, interleaved over the systems"
        if runs > 1
        else "one run of each measurement (one run of every system takes about 7 minutes here, "
        "half the issue's 15-minute budget; read close figures as ties)"
    )
    lines = [
        "## Against the peers",
        "",
        f"`.venv/bin/python {data['command'].removeprefix('python ')}` · {data['started_at']} · "
        f"{num(data['elapsed_s'])} s in all · {repeats} · affinity-queue at "
        f"`{git.get('commit', '?')}`{dirty}.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), load average {m['load_avg_at_start']} at "
        f"start, {m.get('load_avg_at_end', '?')} at the end (other work on the shared machine "
        f"shows there); Python {m['python']}; Redis {m['redis_server']} (private, loopback, no "
        f"persistence), one server for every system, flushed before each measurement; "
        f"redis-py {m['redis_py']}, hiredis {m['hiredis']} for every system.",
        "",
        f"Workloads: W1 {cfg['tasks']:,} tasks enqueued one by one (each awaited), "
        f"{cfg['inflight']} in flight, and in bulk where the system has a bulk call, no worker "
        f"running; W2 the tasks W1 queued (one by one, then {cfg['inflight']} in flight) drained "
        "by 1, then 2 worker processes, timed from the first task starting to the last one "
        f"finishing; W3 {cfg['latency_rate']} tasks/s for {cfg['latency_s']:g} s against idle "
        "workers, from the enqueue call returning to the task starting (in the worker process); "
        f"W4 {cfg['keyed_chains']} chains {X} {cfg['keyed_length']} tasks queued interleaved, each "
        "chain in order and one at a time, then drained. Every task is a no-op that appends one "
        "line to a file. Each worker process runs "
        f"{cfg['workers_per_process']} tasks at once. ¹ capped: the system had not finished "
        f"after {cfg['cap_s']:g} s, and the figure is over what it did by then.",
        "",
        "### Systems",
        "",
        _systems_table(systems),
        "",
        "### Results",
        "",
        "In brackets, each figure divided by the best peer's in its column (for tasks/s, above "
        "1 is faster than every peer; for latency, below 1 is quicker).",
        "",
        _main_table(systems),
    ]
    not_run = [
        f"{e['name']}: {w2['not_run']}"
        for e in systems.values()
        if "not_run" in (w2 := e.get("figures", {}).get("w2.2", {}))
    ]
    if any("w2.2" in e.get("figures", {}) for e in systems.values()):
        lines += [
            "",
            "The 2-process drains start the same worker command twice. W3 is measured here from "
            "the enqueue call to the task starting, the enqueue's own round trip included "
            "(the issue's measure, from the call's return, is in the W3 table below)."
            + (f" ² Not run: {'; '.join(not_run)}." if not_run else ""),
        ]
    lines += [
        "",
        "### Redis cost per task",
        "",
        _cost_table(systems),
        "",
        "From `INFO commandstats` (every command, including those that Lua scripts run) and "
        "`INFO cpu` over W1 one by one and over the 1-process W2 drain, worker start-up "
        "included; worker CPU from `/proc` over the drain, for the whole process group "
        "(children included). Client round trips are known for affinity-queue only (the "
        "commands its scripts call are known). A task run twice is one whose probe line was "
        "written twice (a redelivery).",
    ]
    if any("w3" in e.get("figures", {}) for e in systems.values()):
        lines += [
            "",
            "### W3 in detail",
            "",
            _latency_table(systems),
            "",
            "The issue's measure: from the enqueue call returning to the task starting. A task "
            "starts in another process, which may run it before the call has returned in the "
            "producer: its latency is then negative, and a p50 near zero or below says only "
            "that the task starts within the enqueue's own round trip.",
        ]
    if any("w4" in e.get("figures", {}) for e in systems.values()):
        lines += ["", "### W4 keyed: order and exclusivity", "", _keyed_table(systems)]
    ours = systems.get(OURS, {}).get("figures", {})
    if w6 := ours.get("w6"):
        runs = [("per task", f"{MAX_BATCH}", w6)]
        if batch := ours.get("w6.batch"):
            runs.append((f"batch of {HOT_BATCH}", f"{cfg.get('hot_batch_binding', 1000):,}", batch))
        lines += [
            "",
            "### W6 hot tag (affinity-queue only: the peers have no tags)",
            "",
            f"{cfg['hot_tasks']:,} tasks on one tag, then {cfg['cold_tags']} cold tags {X} "
            f"{cfg['cold_per_tag']} tasks, each group in one `add_bulk` to idle workers. A cold "
            "task's wait is from the cold `add_bulk` call to its start. The hot tasks go to a "
            "per-task handler, then (a second measurement) to a batch handler.",
            "",
            table(
                [
                    "hot handler",
                    "MAX_BATCH_SIZE",
                    "cold wait p50, ms",
                    "p99, ms",
                    "max, ms",
                    "hot tag done after, ms",
                    "hot tasks/s",
                    "hot drain, tasks/s",
                    "a FIFO queue: first cold task after, ms",
                ],
                [
                    [
                        kind,
                        binding,
                        num(w["cold_p50_ms"], 1),
                        num(w["cold_p99_ms"], 1),
                        num(w["cold_max_ms"], 1),
                        num(w["hot_done_ms"]),
                        num(w["hot_rate"]),
                        num(w["hot_drain_rate"]) if "hot_drain_rate" in w else "—",
                        _fifo_ms(cfg, ours),
                    ]
                    for kind, binding, w in runs
                ],
            ),
            "",
            "Hot tasks/s is from the hot `add_bulk` call to the last hot task's end (the "
            "enqueue included); the hot drain is from the first hot task's start to the last "
            "one's end. The last column is what a queue without tags would make the first cold "
            "task wait: every hot task ahead of it, at affinity-queue's own W2 drain rate (1 "
            "process).",
        ]
    if "w5" in data:
        lines += [
            "",
            "### W5 backlog (affinity-queue only): placement rate against the backlog",
            "",
            "The `dispatch` script alone, as in the core section: each call places a batch on "
            "each of 50 idle workers; ratios to the first row (flat means ≥ 0.8).",
            *_placement(data["w5"]),
        ]
    if scale := _scale_table(ours):
        lines += [
            "",
            "### Scale-out (affinity-queue): Redis's cost per task with more worker processes",
            "",
            "The same drain with 1, 2 and 4 worker processes. Every process shares the one "
            "Redis, so a queue's ceiling is Redis's: the last column is 1 s divided by Redis's "
            "CPU per task, the rate one Redis core would sustain if the workers had cores of "
            "their own. On this 2-core machine the processes and Redis compete for the CPU, so "
            "the drain rates themselves do not grow with processes.",
            "",
            scale,
        ]
    if targets := _targets(data):
        lines += ["", "### Issue 14's targets", "", table(["target", "measured", ""], targets)]
    return "\n".join(lines) + "\n"
