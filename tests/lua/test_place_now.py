"""add and advance place what the scheduler's next dispatch would place, in the same script,
when nothing else is due first (place_now): a task for an idle worker starts from the worker's
wake-up, and a worker that frees is given its next run in its advance's reply, with no scheduler
wake-up and no dispatch call between."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from affinity_queue import QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import RawJob, Scripts, carried_run, new_token
from affinity_queue.scheduler import DISPATCH_BUDGET

from ..engine import Engine


async def idle_worker(engine: Engine, name: str = "W") -> None:
    """A worker that asked for work with nothing queued: idle, waiting for its wake-up."""
    await engine.register(name)
    assert await engine.scripts.advance_run(name, [], 20) == []
    assert name in await engine.idle()


async def carried(engine: Engine, worker: str = "W") -> list[RawJob]:
    """The run the worker's one wake-up carries (asserting there is exactly one)."""
    (wake_up,) = await engine.redis.lrange(engine.keys.worker_wake(worker), 0, -1)
    return carried_run(wake_up)


async def retry_the_carried_run(engine: Engine, order: str) -> list[RawJob]:
    """W reports its carried run's one job as a retry due at once; returns what advance gave."""
    [run] = await carried(engine)
    report = [(run.id, "retry", '{"r": 1}', "", "", run.attempts)]
    return await engine.scripts.advance_run("W", report, 20, retry_delay_ms=0, retry_order=order)


async def scheduler_woken(engine: Engine) -> bool:
    return bool(await engine.redis.llen(engine.keys.wake))


async def test_an_add_starts_the_run_of_an_idle_worker_without_dispatch(engine: Engine) -> None:
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    ids = await engine.add("A", 3)
    assert [job.id for job in await carried(engine)] == ids
    assert {(await engine.job(i))["status"] for i in ids} == {"active"}
    assert not await scheduler_woken(engine)  # nothing was left for it
    assert await engine.dispatch() == 0


async def test_an_add_past_the_budget_places_the_budget_and_wakes_the_scheduler(
    engine: Engine,
) -> None:
    """The budget ran out with work left: the scheduler must place the rest. The worker bound
    counts every job it took, in its state and in the tag's bound set (one write of each)."""
    budget = DISPATCH_BUDGET
    await engine.elect(max_batch=3 * budget)
    await idle_worker(engine)
    ids = await engine.add("A", budget + 50)
    run = await carried(engine)
    placed = [job.id for job in run] + await engine.queued("W")
    assert placed == ids[:budget]
    assert await scheduler_woken(engine)
    assert (await engine.worker_state("W"))["batch"] == str(budget)
    assert await engine.redis.zscore(engine.keys.bound(tag_id("A")), "W") == budget
    assert await engine.dispatch() == 50  # rule a: the bound worker has room
    assert await engine.queued("W") == ids[len(run) : budget + 50]
    assert (await engine.worker_state("W"))["batch"] == str(budget + 50)
    assert await engine.redis.zscore(engine.keys.bound(tag_id("A")), "W") == budget + 50


async def test_an_add_to_a_tag_bound_with_room_queues_to_its_worker(engine: Engine) -> None:
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    first = await engine.add("A", 1)
    later = await engine.add("A", 2)  # W runs A's first job: A is bound to W, with room
    assert await engine.queued("W") == later
    assert (await engine.worker_state("W"))["active"] == first[0]
    assert await engine.scripts.advance_run("W", [(first[0], "completed", "1")], 20) != []


async def test_the_oldest_ready_tag_goes_first(engine: Engine) -> None:
    """A tag that waited (no worker was idle) is placed before the new one, as dispatch would."""
    await engine.elect(max_batch=10)
    older = await engine.add("A", 1)  # no worker yet: A waits
    await engine.register("W")  # idle, and the scheduler has not run yet
    (newer,) = await engine.add("B", 1)
    assert (await engine.worker_state("W"))["tag"] == "A"
    assert await engine.queued("W") == older  # W never said what it takes: a bare wake-up
    assert (await engine.job(newer))["status"] == "pending"


async def test_a_paused_queue_places_nothing_on_add(engine: Engine) -> None:
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    await engine.scripts.pause("p1", True)
    ids = await engine.add("A", 2)
    assert {(await engine.job(i))["status"] for i in ids} == {"pending"}
    assert await engine.redis.llen(engine.keys.worker_wake("W")) == 0
    await engine.scripts.pause("p2", False)
    assert await engine.dispatch() == 2


async def test_a_due_retry_keeps_its_place_in_front_of_its_tag(engine: Engine) -> None:
    """A relaxed retry that is due goes back in front of its tag in dispatch: an add of the
    tag must not start its new task first, so it leaves the placing to dispatch."""
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    (retried,) = await engine.add("A", 1)
    await retry_the_carried_run(engine, "relaxed")
    await engine.redis.delete(engine.keys.wake, engine.keys.worker_wake("W"))
    later = await engine.add("A", 1)
    assert (await engine.job(later[0]))["status"] == "pending"
    assert await scheduler_woken(engine)
    await engine.dispatch()
    assert [job.id for job in await carried(engine)] == [retried, *later]


async def test_no_leader_settings_no_placing(engine: Engine) -> None:
    """The batch size comes from a leader's term: before the first one, add only queues."""
    await idle_worker(engine)
    ids = await engine.add("A", 2)
    assert {(await engine.job(i))["status"] for i in ids} == {"pending"}
    assert await engine.redis.llen(engine.keys.worker_wake("W")) == 0


async def test_an_add_of_one_task_gives_an_older_tag_its_whole_batch(engine: Engine) -> None:
    """The oldest ready tag goes first, with the batch dispatch would give it, not one job."""
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    async with engine.backlog():
        older = await engine.add("A", 20)
    await engine.add("B", 1)
    run = [job.id for job in await carried(engine)]
    assert run + await engine.queued("W") == older[:10]


def test_the_budget_is_the_schedulers() -> None:
    prelude = (Path(__file__).parents[2] / "affinity_queue/lua/_shared.lua").read_text()
    m = re.search(r"local PLACE_BUDGET = (\d+)", prelude)
    assert m and int(m[1]) == DISPATCH_BUDGET


async def test_a_rate_limit_hold_made_by_add_wakes_the_scheduler(engine: Engine) -> None:
    """The bucket empties in add's placing: the scheduler must wake to plan for the tag's next
    token (its wait ends then), though nothing else is left to place."""
    await engine.elect(max_batch=10, rates={tag_id("L"): 5.0})
    await idle_worker(engine)
    await engine.add("L", 30)
    assert len(await engine.redis.lrange(engine.keys.worker_wake("W"), 0, -1)) == 1
    assert await engine.redis.zscore(engine.keys.queue_prefix + "held", tag_id("L"))
    assert await scheduler_woken(engine)
    _, _, next_due_ms = await engine.scripts.dispatch(engine.fence, 100)
    assert 150 <= next_due_ms <= 200, next_due_ms


async def test_a_producer_with_other_worker_prefixes_places_nothing(
    engine: Engine, make_settings: Callable[..., QueueSettings]
) -> None:
    """Its worker keys are not the queue's: binding a worker under them would strand the job."""
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    other = make_settings(worker_queue_prefix="other-wq", worker_state_prefix="other-ws")
    producer = Scripts(engine.redis, other.keys, "default")
    added = await producer.add(new_token(), [("t", "A", tag_id("A"), "0")])
    assert (await engine.job(added.ids[0]))["status"] == "pending"
    assert "W" in await engine.idle()
    assert await engine.dispatch() == 1


async def test_a_head_whose_record_is_gone_does_not_fail_the_add(engine: Engine) -> None:
    """The older tag's head record was evicted: placing drops it (start_run) and the add that
    placed it succeeds, its own task written once."""
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    async with engine.backlog():
        gone, kept = await engine.add("A", 2)
    await engine.redis.delete(engine.keys.job(gone))
    (b,) = await engine.add("B", 1)
    assert (await engine.job(b))["status"] == "pending"
    assert [job.id for job in await carried(engine)] == [kept]
    assert (await engine.worker_state("W"))["tag"] == "A"


async def test_a_due_held_tag_goes_first(engine: Engine) -> None:
    """A strict retry due at once holds its tag until dispatch lets it go: an add of another
    tag leaves the placing to dispatch, which places the held tag (older) first."""
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    (h,) = await engine.add("H", 1)
    assert await retry_the_carried_run(engine, "strict") == []  # held, due: nothing placed
    (b,) = await engine.add("B", 1)
    assert (await engine.job(b))["status"] == "pending"
    await engine.dispatch()
    assert [job.id for job in await carried(engine)] == [h]


async def test_a_worker_that_frees_is_given_its_tags_next_batch_in_the_reply(
    engine: Engine,
) -> None:
    """A lone hot tag: each batch's last advance starts the next batch (no other tag is
    placeable), and the reply carries it; no wake-up is left and the scheduler sleeps on."""
    await engine.elect(max_batch=3)
    await idle_worker(engine)
    ids = await engine.add("A", 9)
    await engine.redis.delete(engine.keys.wake, engine.keys.worker_wake("W"))
    ran = []
    run = await engine.scripts.advance_run("W", [], 3)  # the carried run, asked for again
    while run:
        ran += [job.id for job in run]
        done = [(job.id, "completed", "1", "", "", job.attempts) for job in run]
        run = await engine.scripts.advance_run("W", done, 3)
    assert ran == ids
    assert await engine.redis.llen(engine.keys.worker_wake("W")) == 0
    assert not await scheduler_woken(engine)


async def test_a_freed_tag_goes_to_the_worker_idle_longest(engine: Engine) -> None:
    """W1 ran a full batch of A; W2 has waited longer: A's next batch goes to W2 (its
    wake-up), and W1's reply has no run."""
    await engine.elect(max_batch=2)
    await idle_worker(engine, "W1")
    await engine.add("A", 4)
    await idle_worker(engine, "W2")
    run = await carried(engine, "W1")
    assert len(run) == 2
    done = [(job.id, "completed", "1", "", "", job.attempts) for job in run]
    assert await engine.scripts.advance_run("W1", done, 20) == []
    assert len(await carried(engine, "W2")) == 2


async def test_a_stopping_worker_is_not_handed_a_run(engine: Engine) -> None:
    """take 0: the worker is stopping; it finishes its run and gets nothing back."""
    await engine.elect(max_batch=1)
    await idle_worker(engine)
    await engine.add("A", 2)
    [run] = await carried(engine)
    await engine.scripts.retire("W", 1000)
    assert await engine.scripts.advance_run("W", [(run.id, "completed", "1")], 0) == []
    assert (await engine.worker_state("W")).get("active", "") == ""
