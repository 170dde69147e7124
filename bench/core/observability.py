"""``python -m bench.core.observability``: the drain with metrics and tracing off and on.

Modes run interleaved (run 1 of each, then run 2...) on one private redis-server, so a noisy
minute spreads over all of them; each figure is the median, and the ratio is against ``off``.
Tracing uses the SDK with no exporter: the cost of making spans and carrying their context.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from affinity_queue import AffinityQueue

from ..env import private_redis, script_commands
from ..stats import percentile
from . import Config
from .workloads import drain


def _metrics(aq: AffinityQueue) -> None:
    from affinity_queue.observability.metrics import metrics_app

    metrics_app(aq)


def _tracing(aq: AffinityQueue) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from affinity_queue.observability.tracing import instrument

    instrument(aq, tracer_provider=TracerProvider())


MODES: dict[str, Callable[[AffinityQueue], None] | None] = {
    "off": None,
    "metrics": _metrics,
    "tracing": _tracing,
}


async def run(cfg: Config, modes: list[str]) -> dict[str, Any]:
    with private_redis() as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        inner = script_commands()
        rates: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        try:
            for r in range(cfg.runs):
                for mode in modes:
                    await admin.flushall()
                    gc.collect()
                    figures = await drain(server.url, admin, cfg, inner, instrument=MODES[mode])
                    rates[mode].append(figures["tasks_per_s"])
                    cpu[mode].append(figures["python_cpu_us_per_task"])
                    print(
                        f"run {r + 1} {mode}: {figures['tasks_per_s']:.0f} tasks/s", file=sys.stderr
                    )
        finally:
            await admin.aclose()
    medians = {m: percentile(v, 50) for m, v in rates.items()}
    base = medians.get("off")
    return {
        "tasks": cfg.tasks,
        "runs": cfg.runs,
        "tasks_per_s": rates,
        "median_tasks_per_s": medians,
        "median_python_cpu_us_per_task": {m: percentile(v, 50) for m, v in cpu.items()},
        "vs_off": {m: v / base for m, v in medians.items()} if base else {},
        "us_per_task_over_off": {m: 1e6 / v - 1e6 / base for m, v in medians.items()}
        if base
        else {},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.core.observability", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {list(MODES)}")
    args = parser.parse_args(argv)
    cfg = Config(tasks=args.tasks, runs=args.runs)
    print(json.dumps(asyncio.run(run(cfg, args.modes.split(","))), indent=2))


if __name__ == "__main__":
    main()
