"""add places what the scheduler's next dispatch would place, in the same script, when nothing
else is due first: a task for an idle worker starts from the worker's wake-up, with no
scheduler wake-up and no dispatch call between."""

from __future__ import annotations

from affinity_queue.lua import carried_run

from ..engine import Engine


async def idle_worker(engine: Engine, name: str = "W") -> None:
    """A worker that asked for work with nothing queued: idle, waiting for its wake-up."""
    await engine.register(name)
    assert await engine.scripts.advance_run(name, [], 20) == []
    assert name in await engine.idle()


async def scheduler_woken(engine: Engine) -> bool:
    return bool(await engine.redis.llen(engine.keys.wake))


async def test_an_add_starts_the_run_of_an_idle_worker_without_dispatch(engine: Engine) -> None:
    await engine.elect(max_batch=10)
    await idle_worker(engine)
    ids = await engine.add("A", 3)
    (wake_up,) = await engine.redis.lrange(engine.keys.worker_wake("W"), 0, -1)
    assert [job.id for job in carried_run(wake_up)] == ids
    assert {(await engine.job(i))["status"] for i in ids} == {"active"}
    assert not await scheduler_woken(engine)  # nothing was left for it
    assert await engine.dispatch() == 0


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
    (wake_up,) = await engine.redis.lrange(engine.keys.worker_wake("W"), 0, -1)
    [run] = carried_run(wake_up)
    report = [(run.id, "retry", '{"r": 1}', "", "", run.attempts)]
    await engine.scripts.advance_run("W", report, 20, retry_delay_ms=0, retry_order="relaxed")
    await engine.redis.delete(engine.keys.wake, engine.keys.worker_wake("W"))
    later = await engine.add("A", 1)
    assert (await engine.job(later[0]))["status"] == "pending"
    assert await scheduler_woken(engine)
    await engine.dispatch()
    (wake_up,) = await engine.redis.lrange(engine.keys.worker_wake("W"), 0, -1)
    assert [job.id for job in carried_run(wake_up)] == [retried, *later]


async def test_no_leader_settings_no_placing(engine: Engine) -> None:
    """The batch size comes from a leader's term: before the first one, add only queues."""
    await idle_worker(engine)
    ids = await engine.add("A", 2)
    assert {(await engine.job(i))["status"] for i in ids} == {"pending"}
    assert await engine.redis.llen(engine.keys.worker_wake("W")) == 0
