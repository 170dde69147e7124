"""A worker's wake-up carries its first run: dispatch starts it when it binds an idle worker, and
advance delivers it again when the wake-up was lost, never twice."""

from __future__ import annotations

from typing import Any

from affinity_queue.errors import JobNotActiveError
from affinity_queue.lua import RawJob, carried_run

from ..engine import Engine


async def bound(engine: Engine, n: int, take: int = 20, **batch_sizes: int) -> list[str]:
    """Worker W asks for work with nothing queued (it goes idle, leaving ``take`` and its batch
    types), then ``n`` jobs of tag A arrive and dispatch binds W; returns their ids."""
    await engine.elect(max_batch=10)
    await engine.register("W")
    assert await engine.scripts.advance_run("W", [], take, batch_sizes=batch_sizes) == []
    assert "W" in await engine.idle()
    ids = await engine.add("A", n)
    await engine.dispatch()
    return ids


async def wake_ups(engine: Engine) -> list[Any]:
    return await engine.redis.lrange(engine.keys.worker_wake("W"), 0, -1)


async def counts(engine: Engine) -> dict[str, int]:
    raw = await engine.redis.hgetall(engine.keys.counts)
    return {k: int(raw.get(k, 0)) for k in ("pending", "assigned", "active")}


async def test_dispatch_starts_the_run_of_the_worker_it_binds(engine: Engine) -> None:
    ids = await bound(engine, 5)
    (wake_up,) = await wake_ups(engine)
    run = carried_run(wake_up)
    assert [job.id for job in run] == ids
    assert [job.payload for job in run] == ["0", "1", "2", "3", "4"]
    assert {job.attempts for job in run} == {1}
    assert (await engine.worker_state("W"))["active"] == " ".join(ids)
    assert await engine.queued("W") == []
    assert {(await engine.job(i))["status"] for i in ids} == {"active"}
    assert await counts(engine) == {"pending": 0, "assigned": 0, "active": 5}

    # The worker finishes the run it was woken with, as if advance had given it.
    done = [(job.id, "completed", "null") for job in run]
    assert await engine.scripts.advance_run("W", done, 20) == []
    assert {(await engine.job(i))["status"] for i in ids} == {"completed"}
    assert await counts(engine) == {"pending": 0, "assigned": 0, "active": 0}
    assert "W" in await engine.idle()


async def test_a_run_takes_what_the_worker_asked_for_last(engine: Engine) -> None:
    """One job after a slow run (take 1), the rest stay queued to the bound worker."""
    ids = await bound(engine, 5, take=1)
    (wake_up,) = await wake_ups(engine)
    assert [job.id for job in carried_run(wake_up)] == ids[:1]
    assert await engine.queued("W") == ids[1:]
    assert await counts(engine) == {"pending": 0, "assigned": 4, "active": 1}


async def test_a_batch_type_run_is_a_batch(engine: Engine) -> None:
    ids = await bound(engine, 5, t=3)
    (wake_up,) = await wake_ups(engine)
    assert [job.id for job in carried_run(wake_up)] == ids[:3]
    assert await engine.queued("W") == ids[3:]


async def test_a_lost_wake_up_is_delivered_again_once(engine: Engine) -> None:
    ids = await bound(engine, 3)
    # The wake-up's reply is lost in transit: Redis popped it, the worker never read it.
    assert await engine.redis.lpop(engine.keys.worker_wake("W"))
    again = await engine.scripts.advance_run("W", [], 20)
    assert [job.id for job in again] == ids
    assert {job.attempts for job in again} == {1}  # the same start, not a second attempt
    assert await counts(engine) == {"pending": 0, "assigned": 0, "active": 3}


async def test_a_run_delivered_by_advance_drops_its_wake_up(engine: Engine) -> None:
    """A worker that reads its state (the idle check) before its wake-up gets the run from
    advance; the wake-up would hand it the same run a second time."""
    ids = await bound(engine, 3)
    assert len(await wake_ups(engine)) == 1
    again = await engine.scripts.advance_run("W", [], 20)
    assert [job.id for job in again] == ids
    assert await wake_ups(engine) == []


async def test_a_worker_that_never_asked_gets_a_bare_wake_up(engine: Engine) -> None:
    await engine.elect(max_batch=10)
    await engine.register("W")
    ids = await engine.add("A", 2)
    await engine.dispatch()
    assert await wake_ups(engine) == ["1"]
    assert carried_run("1") == []
    assert await engine.queued("W") == ids
    job = await engine.take("W")
    assert isinstance(job, RawJob) and job.id == ids[0]


async def test_an_unrun_carried_run_goes_back_unstarted(engine: Engine) -> None:
    """A worker that is stopping when its wake-up arrives hands the run back without running it:
    its jobs return to the front of its queue with no attempt counted."""
    ids = await bound(engine, 3)
    (wake_up,) = await wake_ups(engine)
    run = carried_run(wake_up)
    assert await engine.scripts.advance_run("W", [(job.id, "", "") for job in run], 0) == []
    assert await engine.queued("W") == ids
    assert {(await engine.job(i))["attempts"] for i in ids} == {"0"}
    assert await counts(engine) == {"pending": 0, "assigned": 3, "active": 0}


async def test_a_stopping_idle_worker_hands_a_carried_run_back_with_no_attempt(
    engine: Engine,
) -> None:
    """stop() deregisters an idle worker with `unstarted`: the run dispatch sent it never ran."""
    ids = await bound(engine, 3)
    assert (await engine.scripts.deregister("W", 500, unstarted=True))[1]
    jobs = [await engine.job(i) for i in ids]
    assert [(j["status"], j["attempts"]) for j in jobs] == [("pending", "0")] * 3
    assert "started" not in jobs[0]
    assert await counts(engine) == {"pending": 3, "assigned": 0, "active": 0}


async def test_a_run_handed_back_without_unstarted_counts_its_attempt(engine: Engine) -> None:
    """A worker that may have run it (its process died, a bug stopped it) keeps the attempt."""
    ids = await bound(engine, 3)
    assert (await engine.scripts.deregister("W", 500))[1]
    assert [(await engine.job(i))["attempts"] for i in ids] == ["1"] * 3


async def test_advance_drops_a_stale_wake_up(engine: Engine) -> None:
    """A failover that loses the pop of a carried run leaves it in the list after the worker
    ran it: the worker's finishing advance drops it, so it is not delivered a second time."""
    ids = await bound(engine, 2)
    (wake_up,) = await wake_ups(engine)
    run = carried_run(wake_up)  # read, and the pop lost: the entry is still there
    done = [(job.id, "completed", "null") for job in run]
    assert await engine.scripts.advance_run("W", done, 20) == []
    assert await wake_ups(engine) == []
    assert {(await engine.job(i))["status"] for i in ids} == {"completed"}


async def test_a_repeated_retry_report_does_not_finish_the_run_dispatch_started_again(
    engine: Engine,
) -> None:
    """The worker reports a retry (relaxed, due at once), the call lands and its reply is lost;
    before the worker repeats it, dispatch starts the same job again as the worker's carried run
    (attempt 2). The repeat names the same id but attempt 1: it is refused (ERR_NOT_ACTIVE),
    and asking again without a report delivers attempt 2 instead of using it up unrun."""
    [job_id] = await bound(engine, 1, take=1)
    (wake_up,) = await wake_ups(engine)
    [first] = carried_run(wake_up)
    report = [(first.id, "retry", '{"r": 1}', "", "", first.attempts)]
    retry = {"retry_delay_ms": 0, "retry_order": "relaxed"}
    assert await engine.scripts.advance_run("W", report, 1, **retry) == []  # reply "lost"
    await engine.dispatch()  # due at once: placed again on W, started as attempt 2
    try:
        await engine.scripts.advance_run("W", report, 1, **retry)  # the repeat
        raise AssertionError("a repeat of attempt 1's report finished attempt 2")
    except JobNotActiveError:
        pass
    [again] = await engine.scripts.advance_run("W", [], 1)
    assert (again.id, again.attempts) == (job_id, 2)
    assert (await engine.job(job_id))["attempts"] == "2"
