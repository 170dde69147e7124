"""The benchmark's surroundings: a private Redis, the machine, and what the server did.

The server is always a fresh ``redis-server`` on a free port (``tests/redis_server.py``), never the
shared one on 6379: the benchmarks flush it between runs and read its global counters, which
would be wrong on a server that anything else uses.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from tests.redis_server import RedisServer


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def machine_info(redis: Redis) -> dict[str, Any]:
    server = await redis.info("server")
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "redis_server": server["redis_version"],
        "redis_py": _package_version("redis"),
        "hiredis": _package_version("hiredis"),
        "affinity_queue": _package_version("affinity-queue"),
        "platform": platform.platform(),
    }


async def main_table_slots(redis: Redis) -> int | None:
    """Buckets of database 0's main hash table, counting both tables while Redis rehashes it.

    Derived from ``MEMORY STATS`` with Redis 7.0's accounting (a 24-byte entry and a 16-byte
    object per key, an 8-byte pointer per bucket); None when the figures do not fit that.
    """
    stats = await redis.memory_stats()
    keys = await redis.dbsize()
    overhead = stats.get("db.0", {}).get("overhead.hashtable.main")
    if overhead is None or (overhead - 40 * keys) % 8:
        return None
    return int((overhead - 40 * keys) // 8)


async def wait_until_rehashed(redis: Redis, timeout_s: float = 120) -> float:
    """Seconds waited until Redis is not rehashing its main hash table.

    When the key count passes a power of two, Redis doubles the table and moves the keys over
    incrementally: about a minute for 2 million keys on these machines, during which every
    command pays about twice as much (each lookup searches both tables and moves a bucket).
    A measurement that starts right after a large fill would time that, not the scripts.
    """
    start = time.monotonic()
    while True:
        slots = await main_table_slots(redis)
        if slots is None or slots & (slots - 1) == 0:  # unknown, or a single power-of-two table
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            print(f"warning: Redis still rehashing after {timeout_s:.0f} s", file=sys.stderr)
            return time.monotonic() - start
        await asyncio.sleep(1)


def script_commands() -> frozenset[str]:
    """The Redis commands our Lua scripts call (lower case, as ``INFO commandstats`` names them).

    Redis counts a command called from a script in ``commandstats`` like one sent by a client;
    the benchmark's clients send none of these during the measured windows, so their calls are
    the scripts' inner work and everything else is a client round trip.
    """
    lua = files("affinity_queue.lua")
    names: set[str] = set()
    for entry in lua.iterdir():
        if entry.name.endswith(".lua"):
            names.update(re.findall(r"rcall\(\s*'([A-Za-z]+)'", entry.read_text()))
    return frozenset(n.lower() for n in names)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Server-side counters and this process's CPU time at one instant."""

    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    redis_cpu_s: float
    python_cpu_s: float
    wall_s: float

    @classmethod
    async def take(cls, redis: Redis) -> Snapshot:
        stats = await redis.info("commandstats")
        cpu = await redis.info("cpu")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        commands = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
        }
        return cls(
            commands=commands,
            redis_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            python_cpu_s=usage.ru_utime + usage.ru_stime,
            wall_s=time.perf_counter(),
        )

    def since(self, before: Snapshot, *, ignore: frozenset[str] = frozenset()) -> Delta:
        """What happened between ``before`` and this snapshot; ``ignore`` drops the benchmark's
        own probes (INFO, ...) from the command counts."""
        commands: dict[str, tuple[int, int]] = {}
        for name, (c, u) in self.commands.items():
            c0, u0 = before.commands.get(name, (0, 0))
            if name not in ignore and c != c0:
                commands[name] = (c - c0, u - u0)
        return Delta(
            commands=commands,
            redis_cpu_s=self.redis_cpu_s - before.redis_cpu_s,
            python_cpu_s=self.python_cpu_s - before.python_cpu_s,
            wall_s=self.wall_s - before.wall_s,
        )


@dataclass(frozen=True, slots=True)
class Delta:
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    redis_cpu_s: float
    python_cpu_s: float
    wall_s: float

    def calls(self, name: str) -> int:
        return self.commands.get(name, (0, 0))[0]

    def round_trips(self, inner: frozenset[str]) -> int:
        """Commands sent by clients: every call of a command that no script uses."""
        return sum(c for n, (c, _) in self.commands.items() if n not in inner)

    def total_commands(self) -> int:
        """Client commands plus the commands that scripts ran inside them."""
        return sum(c for c, _ in self.commands.values())

    def executing_usec(self, inner: frozenset[str]) -> int:
        """Time Redis spent executing client commands; a script's inner commands are timed
        within the script's own EVALSHA, so they are not added again."""
        return sum(u for n, (_, u) in self.commands.items() if n not in inner)
