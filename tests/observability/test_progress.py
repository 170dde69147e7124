"""ctx.set_progress: stored on the running job, rate-limited, never on a finished record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from affinity_queue import AffinityQueue, JobContext, ProgressTooLargeError, QueueSettings, Task
from affinity_queue.worker import MAX_PROGRESS_BYTES

from ..support import wait_for


async def test_progress_is_visible_coalesced_and_bounded(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings())
    go_on = asyncio.Event()
    errors: list[Exception] = []
    where: dict[str, str] = {}

    @aq.handler("long")
    async def long(payload: None, ctx: JobContext) -> str:
        where["worker"] = ctx.worker_id
        await ctx.set_progress({"done": 1, "of": 10})
        for i in range(2, 11):  # faster than the interval: coalesced, the last one lands
            await ctx.set_progress({"done": i, "of": 10})
        try:
            await ctx.set_progress("x" * MAX_PROGRESS_BYTES)
        except ProgressTooLargeError as e:
            errors.append(e)
        await go_on.wait()
        return "ok"

    async with aq:
        q = aq.queue()
        job = await q.add(Task(type="long", identify_tag="a"))
        seen = await wait_for(
            lambda: q.get_job(job.id),
            lambda j: j is not None and j.progress == {"done": 10, "of": 10},
            what="the last progress value",
        )
        assert seen is not None and seen.status.value == "active"
        go_on.set()
        assert await q.wait_for(job.id, timeout_s=10) == "ok"
        # A write for a job that is no longer active on the worker changes nothing.
        scripts = aq.worker()._scripts
        assert not await scripts.progress(where["worker"], job.id, '"late"')
        done = await q.get_job(job.id)
    assert done is not None and done.progress == {"done": 10, "of": 10}
    assert len(errors) == 1 and errors[0].limit == MAX_PROGRESS_BYTES


async def test_a_progress_write_never_resurrects_a_trimmed_record(
    make_settings: Callable[..., QueueSettings], redis_client: aioredis.Redis
) -> None:
    aq = AffinityQueue(make_settings())
    held: dict[str, str] = {}

    @aq.handler("quick")
    async def quick(payload: None, ctx: JobContext) -> None:
        held["worker"], held["job"] = ctx.worker_id, ctx.job_id

    async with aq:
        q = aq.queue()
        job = await q.add(Task(type="quick", identify_tag="a"))
        await q.wait_for(job.id, timeout_s=10)
        key = aq.settings().keys.job(job.id)
        await redis_client.delete(key)  # as retention would
        assert not await aq.worker()._scripts.progress(held["worker"], job.id, "1")
        assert not await redis_client.exists(key)


@pytest.mark.parametrize("value", [float("nan"), object()])
async def test_a_value_that_is_not_json_raises(
    make_settings: Callable[..., QueueSettings], value: object
) -> None:
    aq = AffinityQueue(make_settings())
    raised: list[type[BaseException]] = []

    @aq.handler("bad")
    async def bad(payload: None, ctx: JobContext) -> None:
        try:
            await ctx.set_progress(value)
        except (TypeError, ValueError) as e:
            raised.append(type(e))

    async with aq:
        job = await aq.queue().add(Task(type="bad", identify_tag="a"))
        await aq.queue().wait_for(job.id, timeout_s=10)
    assert len(raised) == 1
