"""``python -m bench.suite``: W1-W6 for affinity-queue and its peers, in one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from .. import baseline, report
from ..core import Config as CoreConfig
from ..core.placement import placements
from ..env import machine_info, private_redis, script_commands
from ..peers import SYSTEMS, WORKERS, System, load, package_version
from ..peers.affinity import Adapter as Ours
from . import QUICK, WORKLOADS, Config
from . import __doc__ as DOC
from .markdown import markdown
from .workloads import Bench, drain, enqueue, hot_tag, keyed, latency, not_supported

SCALE_OUT = 4
"""Worker processes of the extra drain that affinity-queue runs (with 1 and 2, the scale-out)."""


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def run_system(bench: Bench, system: System, only: tuple[str, ...]) -> dict[str, Any]:
    """Every selected workload for one system; W1's queued tasks feed W2's drains."""
    cfg = bench.cfg
    figures: dict[str, Any] = {}
    if "w1" in only or "w2" in only:
        for how, processes in (("one_by_one", 1), ("concurrent", 2)):
            await bench.fresh(system)
            if "w1" in only:
                _say(f"{system.name}: W1 enqueue, {how.replace('_', ' ')}")
                figures[f"w1.{how}"] = result = await enqueue(bench, system, how)
                queued = int(result["tasks"])
            else:
                await system.fill(range(cfg.tasks))
                queued = cfg.tasks
            if "w2" not in only:
                continue
            if processes == 2 and system.two_processes:
                figures["w2.2"] = {"not_run": system.two_processes}
                continue
            _say(f"{system.name}: W2 drain of {queued:,} tasks, {processes} process(es)")
            figures[f"w2.{processes}"] = await drain(bench, system, queued, processes)
        if "w2" in only and isinstance(system, Ours):
            # Scale-out: how Redis's cost per task moves with more worker processes, which
            # gives the projected ceiling of one queue per Redis core (markdown's table).
            await bench.fresh(system)
            await system.fill(range(cfg.tasks))
            _say(f"{system.name}: W2 drain of {cfg.tasks:,} tasks, {SCALE_OUT} processes")
            figures[f"w2.{SCALE_OUT}"] = await drain(bench, system, cfg.tasks, SCALE_OUT)
        if "w1" in only:
            await bench.fresh(system)
            _say(f"{system.name}: W1 enqueue, bulk")
            figures["w1.bulk"] = await not_supported(enqueue(bench, system, "bulk"))
    if "w3" in only:
        await bench.fresh(system)
        _say(f"{system.name}: W3 latency, {cfg.latency_rate}/s for {cfg.latency_s:g} s")
        figures["w3"] = await latency(bench, system)
    if "w4" in only:
        await bench.fresh(system)
        _say(f"{system.name}: W4 keyed, {cfg.keyed_chains} x {cfg.keyed_length}")
        figures["w4"] = await not_supported(keyed(bench, system))
    if "w6" in only and isinstance(system, Ours):
        await bench.fresh(system)
        _say(f"{system.name}: W6 hot tag")
        figures["w6"] = await hot_tag(bench, system)
        await bench.fresh(system)
        _say(f"{system.name}: W6 hot tag, batch handler")
        figures["w6.batch"] = await hot_tag(bench, system, batch=True)
    return figures


def _git_state() -> dict[str, Any]:
    """The commit the run measured, and whether ``affinity_queue/`` had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=report.ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "engine_uncommitted": bool(git("status", "--porcelain", "--", "affinity_queue")),
    }


def _describe(system: System) -> dict[str, Any]:
    return {
        "name": system.name,
        "versions": {d: package_version(d) for d in system.distributions},
        "settings": system.settings,
        "processes": system.processes,
        "keyed": system.keyed,
        "bulk": system.bulk,
        "load_avg_at_start": [],
        "runs": [],
        "elapsed_s": 0.0,
    }


async def run(cfg: Config, only: tuple[str, ...], systems: tuple[str, ...]) -> dict[str, Any]:
    """Runs are interleaved (run 1 of every system, then run 2...) so that a noisy minute on
    the shared machine spreads over all systems rather than spoiling one."""
    tmp = Path(tempfile.mkdtemp(prefix="aq-suite-"))
    with private_redis() as server:
        url = server.url
        admin = Redis.from_url(url, decode_responses=True)
        bench = Bench(url, admin, tmp, cfg, script_commands())
        out: dict[str, Any] = {
            "suite": "peers",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.suite", *sys.argv[1:]]),
            "machine": await machine_info(admin),
            "git": _git_state(),
            "settings": {**asdict(cfg), "workers_per_process": WORKERS, "workloads": only},
            "systems": {},
        }
        started = time.monotonic()
        adapters: dict[str, System] = {}
        for short in systems:
            try:
                adapters[short] = load(short, url)
            except ImportError as e:  # a peer left out of the install: say so, run the others
                _say(f"{short}: not installed ({e})")
                out["systems"][short] = {"name": short, "error": f"not installed: {e}"}
                continue
            out["systems"][short] = _describe(adapters[short])
        try:
            if "baseline" in only:
                await bench.fresh()
                _say("baseline: raw redis-py round trips")
                out["baseline"] = await baseline.round_trips(url, total=cfg.baseline_ops)
            for r in range(cfg.runs):
                for short, system in adapters.items():
                    entry = out["systems"][short]
                    _say(f"run {r + 1}/{cfg.runs}: {system.name}")
                    entry["load_avg_at_start"].append(_load_avg()[0])
                    t0 = time.monotonic()
                    try:
                        await bench.fresh()
                        await system.open()
                        try:
                            entry["runs"].append(await run_system(bench, system, only))
                        finally:
                            await system.aclose()
                    except Exception as e:  # one system failing must not lose the others
                        _say(f"{system.name}: FAILED: {e!r}")
                        traceback.print_exc()
                        entry["error"] = f"{type(e).__name__}: {e}"
                    entry["elapsed_s"] += time.monotonic() - t0
            for entry in out["systems"].values():
                if entry.get("runs"):
                    entry["figures"] = median_figures(entry["runs"])
            if "w5" in only:
                _say("W5: placement against backlogs and tag counts")
                core_cfg = replace(
                    CoreConfig(),
                    placement_pending=cfg.placement_pending,
                    placement_tags=cfg.placement_tags,
                    placement_tags_pending=cfg.placement_tags_pending,
                    placement_placed=cfg.placement_placed,
                    runs=cfg.placement_runs,
                )
                out["w5"] = await placements(url, admin, core_cfg, bench.fresh)
        finally:
            await admin.aclose()
            shutil.rmtree(tmp, ignore_errors=True)
        out["elapsed_s"] = time.monotonic() - started
        out["machine"]["load_avg_at_end"] = _load_avg()
        return out


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each workload's fields over the runs: the median of numbers, True if any run was capped,
    the first run's value otherwise; ``runs_<field>`` keeps every run's headline figures."""
    out: dict[str, Any] = {}
    for workload in runs[0]:
        results = [r[workload] for r in runs if workload in r]
        merged: dict[str, Any] = {}
        for field, first in results[0].items():
            values = [res[field] for res in results if field in res]
            if isinstance(first, bool):
                merged[field] = any(values)
            elif isinstance(first, int):
                merged[field] = round(statistics.median(values))
            elif isinstance(first, float):
                merged[field] = statistics.median(values)
                if len(values) > 1 and field in HEADLINE:
                    merged[f"runs_{field}"] = values
            else:
                merged[field] = first
        out[workload] = merged
    return out


HEADLINE = frozenset({"tasks_per_s", "p50_ms", "p99_ms", "max_ms"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=(DOC or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    choices = [*WORKLOADS, *SYSTEMS]
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated workloads and/or systems (default: all), from {choices}",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the suite")
    parser.add_argument("--cap-s", type=float, help="longest measurement of one system, s")
    parser.add_argument(
        "--runs",
        type=int,
        help="runs of W1-W4 and W6, interleaved over the systems; medians reported (default 1: "
        "a run of every system takes about 7 minutes here)",
    )
    args = parser.parse_args(argv)
    picked = [w.strip() for w in args.only.split(",") if w.strip()]
    if unknown := [w for w in picked if w not in choices]:
        parser.error(f"unknown name(s) {unknown}; choose from {choices}")
    only = tuple(w for w in WORKLOADS if w in picked) or WORKLOADS
    systems = tuple(s for s in SYSTEMS if s in picked) or tuple(SYSTEMS)
    cfg = QUICK if args.quick else Config()
    if args.cap_s:
        cfg = replace(cfg, cap_s=args.cap_s)
    if args.runs:
        cfg = replace(cfg, runs=args.runs)
    partial = args.quick or bool(picked) or args.cap_s is not None
    tag = "quick" if args.quick else "partial" if partial else ""

    data = asyncio.run(run(cfg, only, systems))
    path = report.results_path("suite", tag=tag)
    report.write_json(path, data)
    text = markdown(data)
    print(text)
    _say(f"results: {path.relative_to(report.ROOT)} ({data['elapsed_s']:.0f} s in all)")
    if not partial:
        report.update_section("peers", text)
        _say(f"table: {report.DOCS.relative_to(report.ROOT)}")


if __name__ == "__main__":
    main()
