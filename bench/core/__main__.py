"""``python -m bench.core``: run the core engine's benchmark and write its results."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections import Counter
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from affinity_queue.scheduler import DISPATCH_BUDGET

from .. import baseline, report
from ..env import machine_info, private_redis, script_commands
from ..stats import Series
from . import MAX_BATCH, QUICK, WORKERS, WORKLOADS, Config
from . import __doc__ as DOC
from .markdown import markdown
from .placement import PLACEMENT_WORKERS, placements
from .workloads import add_bulk, add_concurrently, add_one_by_one, counting_scripts, drain, latency


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run(cfg: Config, only: tuple[str, ...], profile: bool) -> dict[str, Any]:
    """Runs are interleaved (run 1 of every workload, then run 2...) so that a noisy minute on
    the shared machine spreads over all figures rather than spoiling one."""
    with private_redis() as server:
        url = server.url
        admin = Redis.from_url(url, decode_responses=True)
        inner = script_commands()
        out: dict[str, Any] = {
            "suite": "core",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.core", *sys.argv[1:]]),
            "machine": await machine_info(admin),
            "settings": {
                **asdict(cfg),
                "worker_count": WORKERS,
                "app_role": "BOTH",
                "max_batch_size": MAX_BATCH,
                "dispatch_budget": DISPATCH_BUDGET,
                "placement_workers": PLACEMENT_WORKERS,
                "handler": "async no-op",
            },
        }
        series: dict[str, Series] = {}

        def record(key: str, unit: str, value: float) -> None:
            series.setdefault(key, Series(unit)).add(value)

        async def fresh() -> None:
            await admin.flushall()  # a private server: every run starts from the same state
            gc.collect()

        try:
            for r in range(cfg.runs):
                _say(f"run {r + 1}/{cfg.runs}")
                if "baseline" in only:
                    await fresh()
                    rates = await baseline.round_trips(url, total=cfg.baseline_ops)
                    for key, rate in rates.items():
                        record(f"baseline.{key}", "round trips/s", rate)
                if "add" in only:
                    await fresh()
                    record("add.one_by_one", "tasks/s", await add_one_by_one(url, cfg))
                    await fresh()
                    record("add.concurrent", "tasks/s", await add_concurrently(url, cfg))
                if "add_bulk" in only:
                    await fresh()
                    record("add.bulk", "tasks/s", await add_bulk(url, cfg))
                if "drain" in only:
                    await fresh()
                    figures = await drain(url, admin, cfg, inner)
                    out.setdefault("drain_calls", []).append(figures.pop("calls"))
                    for key, value in figures.items():
                        record(f"drain.{key}", "", value)
                if "latency" in only:
                    await fresh()
                    for key, value in (await latency(url, cfg)).items():
                        record(f"latency.{key}", "", value)
            if "drain" in only:
                _say("drain: one more run with script calls counted by name")
                await fresh()
                counter: Counter[str] = Counter()
                with counting_scripts(counter):
                    await drain(url, admin, cfg, inner)
                out["drain_script_calls_per_task"] = {
                    k: v / cfg.tasks for k, v in sorted(counter.items())
                }
                if profile:
                    _say("drain: one more run under pyinstrument")
                    await fresh()
                    profiled = await drain(url, admin, cfg, inner, profile=True)
                    out["profile"] = {k: profiled[k] for k in ("profile_text", "profile_html")}
                    out["profile"]["tasks_per_s"] = profiled["tasks_per_s"]
            if "placement" in only:
                out["placement"] = await placements(url, admin, cfg, fresh)
        finally:
            await admin.aclose()
        out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out["figures"] = {k: v.to_json() for k, v in series.items()}
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core",
        description=(DOC or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; --quick: 1)")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the bench")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (uvloop: the 'bench' extra); the library runs on either",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one extra drain with pyinstrument (the 'bench' extra)",
    )
    args = parser.parse_args(argv)
    only = tuple(w.strip() for w in args.only.split(",") if w.strip())
    if unknown := [w for w in only if w not in WORKLOADS]:
        parser.error(f"unknown workload(s) {unknown}; choose from {WORKLOADS}")
    if args.profile and "drain" not in only:
        parser.error("--profile profiles the drain: include it in --only")
    cfg = QUICK if args.quick else Config()
    if args.runs:
        cfg = replace(cfg, runs=args.runs)
    # Only a full run replaces the published table; anything less is kept apart.
    subset = set(only) != set(WORKLOADS)
    partial = args.quick or subset or cfg.runs < 3 or args.loop != "asyncio"
    kind = ["quick"] if args.quick else ["partial"] if partial else []
    tag = "-".join([*kind, *(only if subset else [])])

    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
        tag = "-".join(filter(None, [tag, "uvloop"]))
    data = asyncio.run(run(cfg, only, args.profile))
    data["machine"]["event_loop"] = args.loop

    path = report.results_path("core", tag=tag)
    profile = data.pop("profile", None)
    if profile:
        stem = path.with_name(path.stem + "-drain-profile")
        stem.with_suffix(".txt").write_text(profile["profile_text"])
        stem.with_suffix(".html").write_text(profile["profile_html"])
        data["drain_profile"] = {
            "text": str(stem.with_suffix(".txt").relative_to(report.ROOT)),
            "tasks_per_s_while_profiled": profile["tasks_per_s"],
        }
        _say(f"profile: {data['drain_profile']['text']} (and .html)")
    report.write_json(path, data)
    text = markdown(data)
    print(text)
    _say(f"results: {path.relative_to(report.ROOT)}")
    if not partial:
        report.update_section("core", text)
        _say(f"table: {report.DOCS.relative_to(report.ROOT)}")


if __name__ == "__main__":
    main()
