"""Helpers for the lifecycle tests: tasks, an execution ledger, waits with deadlines."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from affinity_queue import Job, JobStatus, QueueService

from ..support import wait_for

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


def task(tag: str, payload: Any = None, type_: str = "t") -> dict[str, Any]:
    return {"type": type_, "identifyTag": tag, "payload": payload}


@dataclass(frozen=True, slots=True)
class Exec:
    """One handler execution (one attempt), as the handler saw it."""

    job_id: str
    tag: str
    seq: Any
    attempt: int
    worker: str
    start: float
    end: float
    ok: bool


def by_tag(runs: Iterable[Exec]) -> dict[str, list[Exec]]:
    """Executions grouped by tag, each group in start order."""
    grouped: dict[str, list[Exec]] = defaultdict(list)
    for r in runs:
        grouped[r.tag].append(r)
    for group in grouped.values():
        group.sort(key=lambda r: r.start)
    return dict(grouped)


def assert_no_overlap(runs: Iterable[Exec], ctx: str = "") -> None:
    """No two executions of one tag were in progress at once."""
    for tag, group in by_tag(runs).items():
        for prev, nxt in itertools.pairwise(group):
            assert prev.end <= nxt.start, (
                f"{ctx}tag {tag!r} ran twice at once: job {prev.job_id} (attempt {prev.attempt}) "
                f"[{prev.start:.4f}, {prev.end:.4f}] and job {nxt.job_id} (attempt "
                f"{nxt.attempt}) [{nxt.start:.4f}, {nxt.end:.4f}]"
            )


async def eventually(
    check: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll a local condition until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        await asyncio.sleep(0.01)


async def holds(
    check: Callable[[], Any], *, for_s: float, what: str = "condition", every_s: float = 0.02
) -> None:
    """Assert that ``check`` (sync or async) stays true for a whole observation window.

    Only for negatives ("nothing runs while paused"): the window is the claim, not a wait for
    something to happen."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        assert value, f"{what}: stopped holding within {for_s} s"
        await asyncio.sleep(every_s)


async def job_reaches(
    queue: QueueService,
    job_id: str,
    statuses: Collection[JobStatus],
    *,
    timeout_s: float = 10.0,
) -> Job:
    """Wait until the job's status is one of ``statuses``; returns the job."""
    job = await wait_for(
        lambda: queue.get_job(job_id),
        lambda j: j is not None and j.status in statuses,
        timeout_s=timeout_s,
        what=f"job {job_id} in {sorted(statuses)}",
    )
    assert job is not None
    return job


async def settled(queue: QueueService, job_id: str, *, timeout_s: float = 10.0) -> Job:
    """Wait until the job is completed, failed or cancelled."""
    return await job_reaches(queue, job_id, TERMINAL, timeout_s=timeout_s)


async def all_settled(
    queue: QueueService, job_ids: Iterable[str], *, timeout_s: float = 20.0
) -> list[Job]:
    """Wait until every job is completed, failed or cancelled; returns them in order."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [await queue.get_job(i) for i in ids]
        open_ = [(i, j.status if j else None) for i, j in zip(ids, jobs, strict=True)]
        open_ = [(i, s) for i, s in open_ if s not in TERMINAL]
        if not open_:
            return [j for j in jobs if j is not None]
        assert time.monotonic() < deadline, (
            f"{len(open_)} of {len(ids)} jobs not settled in {timeout_s} s: {open_[:10]}"
        )
        await asyncio.sleep(0.02)
