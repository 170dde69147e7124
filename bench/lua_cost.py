"""``python -m bench.lua_cost``: where Redis's CPU goes inside one script call.

Redis runs a cached script's whole text on every call, prelude included. This measures, on a
private redis-server, the Redis CPU per call (``INFO commandstats``, the least of ``--rounds``
rounds of ``--calls`` calls) of: an empty script given ``add``'s arguments; ``add``'s pruned
prelude followed by ``return``; the whole ``add`` of one task to a tag with work (no worker);
and, to show why a prelude costs what it does, 40 small functions over 60 locals that capture 8
of them each, none of them, or one table. Lua 5.1 finds each local a closure captures by
walking the list of locals captured so far, on every call.

    .venv/bin/python -m bench.lua_cost
"""

from __future__ import annotations

import argparse
import secrets
from importlib.resources import files
from typing import Any

from redis import Redis

from affinity_queue.lua import script_source

from .env import private_redis

KEYS = ["{lua-cost}:", "wq:{lua-cost}:", "ws:{lua-cost}:"]
LOCALS, FUNCTIONS, CAPTURED = 60, 40, 8


def _add_args(i: int) -> list[Any]:
    """One task (add.lua's ARGV) for one of 1,000 tags, under a new request token."""
    tag = i % 1000
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
        f"t{tag}",
        f"{tag:x}",
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lua_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the least is reported")
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
    print("| script | Redis CPU per call, µs | of which the commands it calls, µs | commands |")
    print("|---|---|---|---|")
    for name, (per_call, inner_us, commands) in best.items():
        print(f"| {name} | {per_call:.1f} | {inner_us:.1f} | {commands:.1f} |")


if __name__ == "__main__":
    main()
