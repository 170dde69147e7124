"""One adapter per system, so that ``bench.suite`` drives affinity-queue and its peers alike.

Each module ``bench/peers/<system>.py`` holds both sides of one system:

- the **worker side**, at module level: the app, broker or settings object that the system's own
  worker command imports (``celery -A bench.peers.celery worker``, ``saq
  bench.peers.saq.settings``...), with a no-op task that calls :func:`bench.peers.probe.record`;
- the **producer side**: a :class:`System` subclass named ``Adapter``, which the suite uses in
  its own process to enqueue, and which names the worker command.

The worker side reads the private server's URL from ``BENCH_REDIS_URL`` when the module is
imported; the suite sets it before importing any adapter, and a module imported without it
refuses to load rather than fall back to the shared Redis on 6379.

Every worker runs as a subprocess of the suite, started with the system's own command-line entry
point and ``WORKERS`` concurrency; the producer side runs in the suite's process. Sync clients
(RQ, Celery, Dramatiq) enqueue from threads, async ones from coroutines: see :class:`SyncSystem`
and :class:`AsyncSystem`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import ClassVar

URL_ENV = "BENCH_REDIS_URL"
WORKERS = 20
"""Tasks run at once by one worker process (or, for RQ, processes in its pool)."""
QUEUE = "bench"
BIN = Path(sys.executable).parent
"""The virtualenv's scripts (``celery``, ``rq``...): the systems' own worker entry points."""

SYSTEMS: dict[str, str] = {
    "affinity-queue": "bench.peers.affinity",
    "saq": "bench.peers.saq",
    "arq": "bench.peers.arq",
    "rq": "bench.peers.rq",
    "celery": "bench.peers.celery",
    "dramatiq": "bench.peers.dramatiq",
    "taskiq": "bench.peers.taskiq",
}
"""Short name -> adapter module, in the order the suite runs them; ours first."""
OURS = "affinity-queue"


def redis_url() -> str:
    """The private server's URL, for the worker side of a peer module."""
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(
            f"{URL_ENV} is not set: bench.peers modules are loaded by bench.suite, which starts "
            "a private redis-server and sets it (they never use the shared Redis on 6379)"
        )
    return url


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


class NotSupportedError(Exception):
    """The system has no native way to run this workload; the message says what it lacks."""


class System(ABC):
    """The producer side of one system, and how to start its workers."""

    name: ClassVar[str]
    distributions: ClassVar[tuple[str, ...]]
    """Packages whose versions the report lists."""
    settings: ClassVar[str]
    """What is not the system's default, and anything a reader must know to compare."""
    keyed: ClassVar[str | None] = None
    """W4: the native mechanism for per-key order and exclusivity, or None."""
    bulk: ClassVar[str | None] = None
    """W1: the native bulk enqueue call, or None."""
    processes: ClassVar[str] = f"1 process, concurrency {WORKERS}"
    two_processes: ClassVar[str | None] = None
    """Why the 2-process drain is not run for this system, or None when it is."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:  # noqa: B027 (a hook: most systems need nothing)
        """Connect the producer side."""

    async def aclose(self) -> None:  # noqa: B027 (a hook: most systems need nothing)
        """Release what :meth:`open` took."""

    async def reset(self) -> None:  # noqa: B027 (a hook: most systems need nothing)
        """Called after every flush of the server: re-create what the producer declared."""

    @abstractmethod
    def worker_command(self, index: int) -> list[str]:
        """The command line of worker process ``index`` (0, 1... when several run at once)."""

    # -- the producer side: each call is timed by the suite ----------------------------------
    @abstractmethod
    async def add_one_by_one(self, ids: Sequence[int], deadline: float) -> int:
        """Enqueue no-op tasks for ``ids`` in order, each awaited before the next, until done or
        ``time.monotonic()`` passes ``deadline``; returns how many were enqueued (a prefix)."""

    @abstractmethod
    async def add_concurrently(self, ids: Sequence[int], inflight: int, deadline: float) -> int:
        """``inflight`` producers share ``ids``; returns how many were enqueued."""

    @abstractmethod
    async def add_paced(
        self, ids: Sequence[int], rate: float, called: list[float], added: list[float]
    ) -> float:
        """Enqueue ``ids`` at a steady ``rate`` per second; ``called[k]`` and ``added[k]`` are
        set to the monotonic times at which the enqueue of ``ids[k]`` was called and returned.
        Returns the seconds taken to offer them all."""

    async def add_bulk(self, ids: Sequence[int]) -> None:
        raise NotSupportedError(f"{self.name} has no bulk enqueue")

    async def add_keyed(self, chains: Sequence[Sequence[int]]) -> None:
        """Enqueue every chain so that each runs in order, one task at a time."""
        raise NotSupportedError(f"{self.name} has no per-key ordering")

    async def fill(self, ids: Sequence[int]) -> None:
        """Enqueue ``ids`` as fast as the system allows, untimed (before a drain)."""
        try:
            await self.add_bulk(ids)
        except NotSupportedError:
            await self.add_concurrently(ids, 100, float("inf"))


class AsyncSystem(System):
    """A system whose producer is a coroutine: concurrency is coroutines on one event loop."""

    @abstractmethod
    async def send(self, i: int) -> None:
        """Enqueue the no-op task ``i``."""

    async def add_one_by_one(self, ids: Sequence[int], deadline: float) -> int:
        done = 0
        for i in ids:
            await self.send(i)
            done += 1
            if time.monotonic() > deadline:
                break
        return done

    async def add_concurrently(self, ids: Sequence[int], inflight: int, deadline: float) -> int:
        done = 0

        async def producer(share: Sequence[int]) -> None:
            nonlocal done
            for i in share:
                if time.monotonic() > deadline:
                    return
                await self.send(i)
                done += 1

        await asyncio.gather(*(producer(ids[k::inflight]) for k in range(inflight)))
        return done

    async def add_paced(
        self, ids: Sequence[int], rate: float, called: list[float], added: list[float]
    ) -> float:
        async def one(k: int) -> None:
            called[k] = time.monotonic()
            await self.send(ids[k])
            added[k] = time.monotonic()

        sends = []
        t0 = time.monotonic()
        for k in range(len(ids)):
            delay = t0 + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(one(k)))
        offered_s = time.monotonic() - t0
        await asyncio.gather(*sends)
        return offered_s


class SyncSystem(System):
    """A system whose producer blocks: loops run in threads, never one thread hop per task."""

    @abstractmethod
    def send(self, i: int) -> None:
        """Enqueue the no-op task ``i`` (called from a worker thread)."""

    async def add_one_by_one(self, ids: Sequence[int], deadline: float) -> int:
        return await asyncio.to_thread(self._loop, ids, deadline)

    def _loop(self, ids: Sequence[int], deadline: float) -> int:
        done = 0
        for i in ids:
            self.send(i)
            done += 1
            if time.monotonic() > deadline:
                break
        return done

    async def add_concurrently(self, ids: Sequence[int], inflight: int, deadline: float) -> int:
        def run() -> int:
            with ThreadPoolExecutor(inflight, thread_name_prefix="bench-send") as pool:
                shares = [ids[k::inflight] for k in range(inflight)]
                return sum(pool.map(self._loop, shares, [deadline] * inflight))

        return await asyncio.to_thread(run)

    async def add_paced(
        self, ids: Sequence[int], rate: float, called: list[float], added: list[float]
    ) -> float:
        """One thread sends on the schedule; a send slower than the interval delays the next
        (the offered rate then falls short of ``rate``, and the report shows it)."""

        def run() -> float:
            t0 = time.monotonic()
            for k, i in enumerate(ids):
                delay = t0 + k / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                called[k] = time.monotonic()
                self.send(i)
                added[k] = time.monotonic()
            return time.monotonic() - t0

        return await asyncio.to_thread(run)


def load(short_name: str, url: str) -> System:
    """Import the adapter module (its worker side reads ``BENCH_REDIS_URL``) and build it."""
    os.environ[URL_ENV] = url
    module = importlib.import_module(SYSTEMS[short_name])
    adapter: System = module.Adapter(url)
    return adapter
