"""Hooks: startup and shutdown, job middleware, tag bound and released, ctx.tag_state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from affinity_queue import (
    AffinityQueue,
    HookError,
    JobContext,
    JobStatus,
    QueueSettings,
    TagEvent,
    Task,
)

from ..support import drained, wait_for


async def test_startup_values_reach_every_handler_and_shutdown_runs_after_the_workers(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    events: list[str] = []
    seen: list[Any] = []

    @aq.on_startup
    async def open_pool() -> dict[str, Any]:
        events.append("startup")
        return {"pool": "the-pool"}

    @aq.on_shutdown
    def close_pool() -> None:
        events.append("shutdown")

    @aq.handler("use")
    async def use(payload: int, ctx: JobContext) -> None:
        events.append("job")
        seen.append(ctx.state["pool"])

    async with aq:
        await aq.queue().add_bulk(
            [Task(type="use", identify_tag=f"t{i}", payload=i) for i in range(5)]
        )
        await drained(aq.queue(), 5)
    assert seen == ["the-pool"] * 5
    assert events[0] == "startup" and events[-1] == "shutdown" and events.count("job") == 5


async def test_a_startup_hook_that_raises_stops_the_start(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings())

    @aq.on_startup
    def broken() -> None:
        raise ConnectionRefusedError("database down")

    with pytest.raises(HookError, match="broken") as raised:
        await aq.start()
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert aq.worker().worker_ids == []  # nothing registered, nothing bound
    await aq.aclose()


async def test_middleware_sees_context_outcome_and_error(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings())
    calls: list[tuple[str, str, Any]] = []

    @aq.middleware
    async def outer(ctx: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        calls.append(("before", ctx.job_id, None))
        try:
            result = await call_next()
        except Exception as e:
            calls.append(("error", ctx.job_id, type(e).__name__))
            raise
        calls.append(("after", ctx.job_id, result))
        return result

    @aq.middleware
    async def refuse(ctx: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        if ctx.identify_tag == "blocked":
            raise PermissionError("tenant blocked")
        return await call_next()

    @aq.handler("double")
    def double(payload: int) -> int:  # sync: runs in a thread inside the middleware
        if payload < 0:
            raise ValueError("negative")
        return payload * 2

    async with aq:
        q = aq.queue()
        ok = await q.add(Task(type="double", identify_tag="a", payload=21))
        bad = await q.add(Task(type="double", identify_tag="a", payload=-1))
        blocked = await q.add(Task(type="double", identify_tag="blocked", payload=1))
        assert await q.wait_for(ok.id, timeout_s=10) == 42
        await drained(q, 3)
        assert (await q.get_job(bad.id)).status is JobStatus.FAILED  # type: ignore[union-attr]
        refused = await q.get_job(blocked.id)
    assert refused is not None and refused.status is JobStatus.FAILED
    assert refused.error is not None and refused.error.type == "PermissionError"
    assert ("after", ok.id, 42) in calls
    assert ("error", bad.id, "ValueError") in calls
    assert ("error", blocked.id, "PermissionError") in calls


async def test_tag_state_lives_for_one_binding(make_settings: Callable[..., QueueSettings]) -> None:
    """One worker, batch 3, 7 jobs of one tag: bound, warmed once per binding, state shared by
    the jobs of a binding, released with a reason, state dropped."""
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=3))
    bound: list[TagEvent] = []
    released: list[TagEvent] = []
    per_job: list[int] = []

    @aq.on_tag_bound
    async def warm(event: TagEvent) -> None:
        event.tag_state["cache"] = f"warm:{event.identify_tag}"
        event.tag_state["runs"] = 0
        bound.append(event)

    @aq.on_tag_released
    def flush(event: TagEvent) -> None:
        released.append(event)

    @aq.handler("run")
    async def run(payload: int, ctx: JobContext) -> None:
        assert ctx.tag_state["cache"] == f"warm:{ctx.identify_tag}"
        ctx.tag_state["runs"] += 1
        per_job.append(ctx.tag_state["runs"])

    async with aq:
        await aq.queue().add_bulk(
            [Task(type="run", identify_tag="acme", payload=i) for i in range(7)]
        )
        await drained(aq.queue(), 7)
        await wait_for(lambda: asyncio.sleep(0, len(released)), lambda n: n == len(bound))
    assert [e.identify_tag for e in bound] == ["acme"] * len(bound)
    assert len(bound) >= 3  # at most 3 jobs per binding
    assert per_job.count(1) == len(bound)  # a fresh state for every binding
    assert max(per_job) <= 3
    assert {e.reason for e in released} <= {"batch_full", "drained"}
    assert "batch_full" in {e.reason for e in released}
    assert all(e.tag_state is b.tag_state for e, b in zip(released, bound, strict=True))


async def test_a_bound_hook_that_raises_fails_its_job_and_the_next_job_retries_it(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    attempts = 0

    @aq.on_tag_bound
    def warm(event: TagEvent) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TimeoutError("cache unreachable")

    @aq.handler("run")
    async def run(payload: int) -> int:
        return payload

    async with aq:
        q = aq.queue()
        jobs = await q.add_bulk(
            [Task(type="run", identify_tag="acme", payload=i) for i in range(2)]
        )
        stats = await drained(q, 2)
        first, second = [await q.get_job(j.id) for j in jobs]
    assert first is not None and first.status is JobStatus.FAILED
    assert first.error is not None and first.error.type == "TimeoutError"
    assert second is not None and second.status is JobStatus.COMPLETED
    assert attempts == 2
    assert all(w.current_identify_tag is None for w in stats.workers)  # no tag left bound


async def test_stop_releases_a_held_tag(make_settings: Callable[..., QueueSettings]) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    released: list[str] = []
    started = asyncio.Event()

    @aq.on_tag_released
    def flush(event: TagEvent) -> None:
        released.append(event.reason)

    @aq.handler("slow")
    async def slow(payload: int) -> None:
        started.set()
        await asyncio.sleep(0.2)

    async with aq:
        await aq.queue().add_bulk(
            [Task(type="slow", identify_tag="a", payload=i) for i in range(3)]
        )
        await asyncio.wait_for(started.wait(), 10)
    assert released == ["released_on_stop"]
