"""``python -m bench.lua_cost``: where Redis's CPU goes inside one script call.

Redis runs a cached script's whole text on every call, prelude included. This measures, on a
private redis-server, the Redis CPU per call (``INFO commandstats``, the least of ``--rounds``
rounds of ``--calls`` calls) of: an empty script given ``add``'s arguments; ``add``'s pruned
prelude followed by ``return``; the whole ``add`` of one task to a tag with work (no worker);
and, to show why a prelude costs what it does, 40 small functions over 60 locals that capture 8
of them each, none of them, or one table. Lua 5.1 finds each local a closure captures by
walking the list of locals captured so far, on every call.

Then the latency path, one task at a time with one idle worker (a leader's settings written, the
worker registered): the ``add`` that places the task on the worker and starts its run, and the
``advance`` that completes it and frees the worker: each call's time from SLOWLOG (the median
and the least of ``--path-calls`` calls; logging every command the scripts call adds to it) and
the commands it called (exact).

    .venv/bin/python -m bench.lua_cost
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import statistics
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from affinity_queue import QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import (
    AddOptions,
    Scripts,
    TermConfig,
    carried_run,
    new_token,
    script_source,
)

from .env import private_redis

PATH_LOG = 200_000
"""SLOWLOG entries kept for the latency path: about 110 per task (its scripts' commands too)."""
KEYS = ["{lua-cost}:", "wq:{lua-cost}:", "ws:{lua-cost}:"]
LOCALS, FUNCTIONS, CAPTURED = 60, 40, 8


def _add_args(i: int) -> list[Any]:
    """One task (add.lua's ARGV) for one of 1,000 tags, under a new request token."""
    tag = f"t{i % 1000}"
    return [
        secrets.token_hex(8),
        1,
        3,
        1000,
        0,
        0,
        0,
        "",
        0,
        0,
        "",
        "noop",
        tag,
        tag_id(tag),
        i,
    ]


def _closures() -> dict[str, str]:
    """Synthetic scripts: what capturing locals costs each call."""
    names = "\n".join(f"local L{i} = 'x{i}'" for i in range(LOCALS))
    table = "local L = {" + ",".join(f"'x{i}'" for i in range(LOCALS)) + "}"

    def script(head: str, ref: str) -> str:
        """``head``, then FUNCTIONS functions that each join CAPTURED values spelled by ``ref``
        (formatted with ``k``, a 0-based local index), or nothing when ``ref`` is empty."""
        fns = []
        for i in range(FUNCTIONS):
            picks = [ref.format(k=(i * 7 + j) % LOCALS) for j in range(CAPTURED)] if ref else []
            fns.append(f"local function g{i}(a)\n  return " + " .. ".join(["a", *picks]) + "\nend")
        return "\n".join([head, *fns, "return 1"])

    return {
        f"{FUNCTIONS} functions capturing {CAPTURED} of {LOCALS} locals": script(names, "L{k}"),
        f"{FUNCTIONS} functions capturing no local": script(names, ""),
        f"{FUNCTIONS} functions capturing one table": script(table, "L[{k} + 1]"),
    }


async def _latency_path(url: str, calls: int) -> dict[str, list[tuple[int, int]]]:
    """Per ``add`` that places on the idle worker, and per ``advance`` that completes its task
    and frees it: (its SLOWLOG duration in µs, the commands it called). Redis 7 logs a
    script's commands too, each before the script's own entry."""
    r = AsyncRedis.from_url(url, decode_responses=True)
    settings = QueueSettings(_env_file=None, redis_url=url, pending_queue_name="lua-path")
    scripts = Scripts(r, settings.keys, "lua-path")
    await scripts.elect("token", 600_000, "node", "host", 1, TermConfig(max_batch=10))
    await scripts.register("W", 600_000, "host", 1, "epoch")
    assert await scripts.advance_run("W", [], 1) == []  # idle, and says what it takes
    shas = {hashlib.sha1(script_source(n).encode()).hexdigest(): n for n in ("add", "advance")}
    await r.config_set("slowlog-max-len", PATH_LOG)
    await r.config_set("slowlog-log-slower-than", 0)
    await r.slowlog_reset()
    for i in range(calls):
        tag = f"t{i % 1000}"
        await scripts.add(new_token(), [("noop", tag, tag_id(tag), str(i))], AddOptions())
        woken = await r.blpop([settings.keys.worker_wake("W")], timeout=5)
        assert woken, "add did not place the task on the idle worker"
        (run,) = carried_run(str(woken[1]))
        assert await scripts.advance_run("W", [(run.id, "completed", "null")], 1) == []
    log = await r.slowlog_get(PATH_LOG)
    await r.config_set("slowlog-log-slower-than", 10_000)
    await r.aclose()
    assert len(log) < PATH_LOG, "the slowlog was full: fewer --path-calls"
    calls_of: dict[str, list[tuple[int, int]]] = {"add": [], "advance": []}
    inner = 0
    for entry in reversed(log):  # oldest first
        words = bytes(entry["command"]).decode().split()  # bytes whatever the client decodes
        if words[0].upper() in ("EVALSHA", "EVAL"):
            if words[1] in shas:
                calls_of[shas[words[1]]].append((int(entry["duration"]), inner))
            inner = 0
        else:
            inner += 1
    return calls_of


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lua_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the least is reported")
    parser.add_argument("--path-calls", type=int, default=500, help="tasks on the latency path")
    args = parser.parse_args()
    full = script_source("add")
    operation = files("affinity_queue.lua").joinpath("add.lua").read_text()
    prelude = full[: len(full) - len(operation)]
    cases: dict[str, tuple[str, bool]] = {
        "empty script, add's arguments": ("return 1", True),
        "add's prelude, then return": (prelude + "\nreturn 1", True),
        "add of one task": (full, True),
        **{name: (src, False) for name, src in _closures().items()},
    }
    with private_redis() as server:
        r = Redis.from_url(server.url)
        shas = {name: r.script_load(src) for name, (src, _) in cases.items()}
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(args.rounds):
            for name, (_, with_args) in cases.items():
                r.config_resetstat()
                for i in range(args.calls):
                    if with_args:
                        r.evalsha(shas[name], len(KEYS), *KEYS, *_add_args(i))
                    else:
                        r.evalsha(shas[name], 0)
                stats = r.info("commandstats")
                calls = stats["cmdstat_evalsha"]["calls"]
                inner = [
                    v for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config")
                ]
                figures = (
                    stats["cmdstat_evalsha"]["usec"] / calls,
                    sum(v["usec"] for v in inner) / calls,
                    sum(v["calls"] for v in inner) / calls,
                )
                if name not in best or figures[0] < best[name][0]:
                    best[name] = figures
        r.close()
        path = asyncio.run(_latency_path(server.url, args.path_calls))
    print("| script | Redis CPU per call, µs | of which the commands it calls, µs | commands |")
    print("|---|---|---|---|")
    for name, (per_call, inner_us, commands) in best.items():
        print(f"| {name} | {per_call:.1f} | {inner_us:.1f} | {commands:.1f} |")
    print()
    print(
        "| the latency path, one idle worker | calls | SLOWLOG median, µs | least, µs | commands |"
    )
    print("|---|---|---|---|---|")
    labels = {"add": "add that places and starts the task", "advance": "advance that frees"}
    for name, values in path.items():
        times = [t for t, _ in values]
        commands = statistics.median(n for _, n in values)
        print(
            f"| {labels[name]} | {len(values):,} | {statistics.median(times):.0f} "
            f"| {min(times)} | {commands:.0f} |"
        )


if __name__ == "__main__":
    main()
