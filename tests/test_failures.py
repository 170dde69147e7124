"""What happens when handlers fail, are missing, block, or return what cannot be stored."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from affinity_queue import AffinityQueue, JobContext, JobStatus

from .support import Run, drained


def task(tag: str, payload: Any = None, type_: str = "t") -> dict[str, Any]:
    return {"type": type_, "identifyTag": tag, "payload": payload}


async def test_a_raising_handler_fails_its_job_and_the_worker_goes_on(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=10))
    runs: list[Run] = []

    @aq.handler("t")
    async def handle(payload: int, ctx: JobContext) -> int:
        start = time.monotonic()
        runs.append(Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, start, start))
        if payload == 2:
            raise ValueError(f"bad input {payload}")
        return payload

    jobs = await aq.queue().add_bulk(task("T", i) for i in range(5))
    async with aq:
        stats = await drained(aq.queue(), 5)
        stored = [await aq.queue().get_job(j.id) for j in jobs]
    assert (stats.completed, stats.failed) == (4, 1)
    failed = stored[2]
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert failed.error.message == "bad input 2"
    assert "Traceback" in failed.error.traceback
    assert (
        "in handle" in failed.error.traceback
        and "ValueError: bad input 2" in failed.error.traceback
    )
    assert failed.result is None and failed.finished_at is not None
    for i in (0, 1, 3, 4):
        ok = stored[i]
        assert ok is not None and ok.status is JobStatus.COMPLETED and ok.result == i
        assert ok.error is None
    # The failure did not break the binding: one worker ran the whole batch, in order.
    assert [r.payload for r in runs] == [0, 1, 2, 3, 4]
    assert len({r.worker for r in runs}) == 1
    # ...and the tag is released by the usual rule once the batch is done.
    for w in stats.workers:
        assert (w.status, w.current_identify_tag, w.current_batch_size) == ("idle", None, 0), w


async def test_a_failure_counts_toward_the_batch(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=3))
    runs: list[Run] = []

    @aq.handler("t")
    async def handle(payload: int, ctx: JobContext) -> None:
        now = time.monotonic()
        runs.append(Run(ctx.job_id, ctx.identify_tag, ctx.worker_id, payload, now, now))
        await asyncio.sleep(0.002)
        if payload % 2:
            raise RuntimeError("odd")

    await aq.queue().add_bulk(task("T", i) for i in range(6))
    async with aq:
        stats = await drained(aq.queue(), 6)
    assert (stats.completed, stats.failed) == (3, 3)
    assert [r.payload for r in runs] == list(range(6))
    first, second = runs[:3], runs[3:]
    assert len({r.worker for r in first}) == 1 and len({r.worker for r in second}) == 1
    assert first[0].worker != second[0].worker, "a full batch (failures included) was not released"


async def test_an_unknown_task_type_fails_with_a_message_naming_it(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("known")
    async def known(payload: None) -> str:
        return "ok"

    q = aq.queue()
    missing = await q.add(task("T", None, "no-such-type"))
    after = await q.add(task("T", None, "known"))
    async with aq:
        await drained(q, 2)
        got, ok = await q.get_job(missing.id), await q.get_job(after.id)
    assert got is not None and got.status is JobStatus.FAILED
    assert got.error is not None
    assert "no-such-type" in got.error.message
    assert "known" in got.error.message, "the message should list the registered types"
    assert ok is not None and ok.status is JobStatus.COMPLETED and ok.result == "ok"


async def test_a_sync_handler_runs_in_a_thread_and_does_not_block_the_loop(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))
    loop_thread = threading.get_ident()
    unblock = threading.Event()
    seen: dict[str, Any] = {}

    @aq.handler("sync")
    def blocking(payload: None) -> bool:
        seen["thread"] = threading.get_ident()
        # Blocks its thread until the async handler, on the loop, has run.
        return unblock.wait(timeout=10)

    @aq.handler("async")
    async def on_loop(payload: None) -> None:
        seen["async_thread"] = threading.get_ident()
        unblock.set()

    q = aq.queue()
    sync_job = await q.add(task("S", None, "sync"))
    await q.add(task("A", None, "async"))
    async with aq:
        await drained(q, 2)
        got = await q.get_job(sync_job.id)
    assert got is not None and got.status is JobStatus.COMPLETED
    assert got.result is True, "the sync handler waited out its timeout: the loop was blocked"
    assert seen["thread"] != loop_thread
    assert seen["async_thread"] == loop_thread


async def test_handlers_get_the_context_only_when_they_ask_for_it(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    calls: dict[str, tuple[Any, ...]] = {}

    @aq.handler("payload-only")
    async def payload_only(payload: Any) -> None:
        calls["payload-only"] = (payload,)

    @aq.handler("with-context")
    def with_context(payload: Any, ctx: JobContext) -> None:
        calls["with-context"] = (payload, ctx)

    q = aq.queue()
    await q.add(task("T", {"a": 1}, "payload-only"))
    job = await q.add(task("ctx tag", [1, "two"], "with-context"))
    async with aq:
        stats = await drained(q, 2)
        stored = await q.get_job(job.id)
    assert calls["payload-only"] == ({"a": 1},)
    payload, ctx = calls["with-context"]
    assert payload == [1, "two"]
    assert isinstance(ctx, JobContext)
    assert stored is not None
    assert (ctx.job_id, ctx.identify_tag, ctx.attempt, ctx.queue) == (
        job.id,
        "ctx tag",
        1,
        "default",
    )
    assert ctx.worker_id == stored.worker_id
    assert ctx.worker_id in {w.worker_id for w in stats.workers}


async def test_a_result_that_is_not_json_fails_the_job_clearly(make_settings) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("set")
    async def returns_set(payload: None) -> set[int]:
        return {1, 2}

    @aq.handler("nan")
    async def returns_nan(payload: None) -> float:
        return float("nan")

    @aq.handler("fine")
    async def fine(payload: None) -> dict[str, int]:
        return {"ok": 1}

    q = aq.queue()
    bad_set = await q.add(task("T", None, "set"))
    bad_nan = await q.add(task("T", None, "nan"))
    good = await q.add(task("T", None, "fine"))
    async with aq:
        await drained(q, 3)
        jobs = [await q.get_job(j.id) for j in (bad_set, bad_nan, good)]
    for job in jobs[:2]:
        assert job is not None and job.status is JobStatus.FAILED, job
        assert job.error is not None and job.result is None
        message = job.error.message.lower()
        assert "json" in message and "result" in message, job.error
    assert "set" in jobs[0].error.message  # type: ignore[union-attr]
    assert jobs[2] is not None and jobs[2].status is JobStatus.COMPLETED
    assert jobs[2].result == {"ok": 1}
