"""Regressions for the engine defects of the guarantees issue: each test fails on the engine
before its fix. The scripts are driven by hand (tests/engine.py) where one rule is pinned, and
through the real runtime where the fault is the runtime's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from affinity_queue import AffinityQueue, ConfigMismatchError, LeaseLostError, QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import AddOptions, RawJob, Scripts, TermConfig, new_token

from .engine import Engine, redis_ms
from .proxy import Proxy
from .redis_server import RedisServer
from .support import drained, wait_for

SettingsFactory = Callable[..., QueueSettings]


async def run_all(engine: Engine, worker: str) -> list[RawJob]:
    """Dispatch and run every job on ``worker`` until nothing is left; the jobs in run order."""
    ran: list[RawJob] = []
    job: RawJob | None = None
    while True:
        await engine.dispatch()
        job = await engine.take(worker)
        if job is None:
            return ran
        while job is not None:
            ran.append(job)
            job = await engine.take(worker, job)


async def test_a_worker_takes_another_tag_after_a_full_batch_whenever_one_waits(
    engine: Engine,
) -> None:
    """Defect 1: tags that gave up a worker all got the turn seq + 0.5; once producers stopped,
    the tie went to the lowest tag id every time and one tag ran 180 tasks in a row."""
    await engine.elect(max_batch=4)
    await engine.register("W")
    tags = [f"tag-{i}" for i in range(6)]
    for tag in tags:
        await engine.add(tag, 20)
    ran = await run_all(engine, "W")
    assert len(ran) == 120
    left = {tag: 20 for tag in tags}
    streak_tag, streak = "", 0
    for job in ran:
        streak = streak + 1 if job.identify_tag == streak_tag else 1
        streak_tag = job.identify_tag
        others_waiting = any(n for t, n in left.items() if t != streak_tag)
        assert streak <= 4 or not others_waiting, (
            f"{streak} tasks of {streak_tag} in a row while {left} were waiting"
        )
        left[streak_tag] -= 1


async def test_a_rebinding_to_the_same_tag_continues_its_batch(engine: Engine) -> None:
    """Defect 1, the other way round: a worker whose queue drained early and was bound to the
    same tag again started a fresh batch, so it ran more than a batch in a row while others
    waited."""
    await engine.elect(max_batch=4)
    await engine.register("W")
    async with engine.backlog():
        await engine.add("A", 2)
    assert await engine.dispatch() == 2
    job = await engine.take("W")
    job = await engine.take("W", job)
    async with engine.backlog():  # the scheduler is late: W's queue drains first
        await engine.add("A", 6)  # more of A while A still runs on W
        await engine.add("B", 1)
    job = await engine.take("W", job)  # drained: W releases A, and is bound again at once
    ran = []
    while job is not None:
        ran.append(job)
        job = await engine.take("W", job)
    ran += await run_all(engine, "W")
    tags = [j.identify_tag for j in ran]
    # W ran 2 of A; a new binding to A continues the count, so B comes after 2 more at most.
    assert tags.index("B") <= 2, tags


async def test_delayed_tasks_due_together_start_in_the_order_they_were_added(
    engine: Engine,
) -> None:
    """Defect 2: the delayed set ordered equal due times by member bytes ("10" < "9")."""
    await engine.elect(max_batch=100)
    await engine.register("W")
    now = await redis_ms(engine.redis)
    await engine.add("A", 12, AddOptions(run_at_ms=now + 100))
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > now + 100, what="due")
    ran = await run_all(engine, "W")
    assert [int(j.payload) for j in ran] == list(range(12))


async def test_relaxed_retries_due_in_one_dispatch_keep_their_order(engine: Engine) -> None:
    """Defect 2: relaxed retries that came due together were pushed to the front one by one,
    which reversed them."""
    await engine.elect(max_batch=100)
    await engine.register("W")
    await engine.add("A", 3, AddOptions(max_attempts=2))
    await engine.dispatch()
    first = await engine.take("W")
    assert first is not None
    second = await engine.scripts.advance(
        "W", first.id, "retry", '{"type":"E"}', True, 100, "relaxed"
    )
    assert second is not None
    third = await engine.scripts.advance(
        "W", second.id, "retry", '{"type":"E"}', True, 150, "relaxed"
    )
    assert third is not None and await engine.take("W", third) is None
    now = await redis_ms(engine.redis)
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > now + 200, what="both due")
    ran = await run_all(engine, "W")
    assert [j.id for j in ran] == [first.id, second.id]


async def test_placing_never_binds_an_idle_worker_whose_lease_expired(engine: Engine) -> None:
    """Defect 3: the longest-idle worker had crashed; every new tag went to it and waited for
    the reaper while live workers sat idle. The add places the task (a worker is idle), by the
    rules dispatch places by."""
    await engine.elect(max_batch=10)
    await engine.register("dead", lease_ms=100)
    await engine.register("live")
    expiry = float(await engine.redis.zscore(engine.keys.workers, "dead") or 0)
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > expiry, what="the lease to expire")
    await engine.add("A", 1)
    assert await engine.queued("live") != []
    assert (await engine.worker_state("dead")).get("status") == "idle"


async def test_elect_installs_ten_thousand_per_tag_limits(engine: Engine) -> None:
    """Defect 6: elect passed Lua's unpack limit after writing the fence, the lease and the
    config and deleting the old limits; Redis kept the half-done term."""
    limits = {tag_id(f"tenant-{i}"): 2 for i in range(10_000)}
    await engine.elect(max_batch=10, limits=limits)
    assert await engine.redis.hlen(engine.keys.queue_prefix + "limits") == 10_000


async def test_the_largest_inputs_each_script_accepts_run_whole(engine: Engine) -> None:
    """Defect 6: every script sized for its largest input (1,000 tasks per add, 1,000 workers per
    heartbeat, 1,000 jobs placed on one worker in one call)."""
    await engine.elect(max_batch=100_000)
    workers = [f"w{i}" for i in range(1000)]
    await engine.register(*workers)
    async with engine.backlog():
        assert len(await engine.add("A", 1000)) == 1000
    assert await engine.dispatch() == 1000
    lost, _ = await engine.scripts.heartbeat("epoch", 60_000, workers)
    assert lost == []


async def test_register_repeated_after_a_lost_reply_keeps_the_binding(engine: Engine) -> None:
    """Defect 7: the retry of a register that had landed reset a bound worker to idle while it
    stayed in the tag's bound set with the tag's jobs queued: the tag was stuck."""
    await engine.elect(max_batch=10)
    await engine.register("W")
    async with engine.backlog():
        await engine.add("A", 3)
    assert await engine.dispatch() == 3
    await engine.register("W")  # the retry
    assert (await engine.worker_state("W"))["status"] == "running"
    assert "W" not in await engine.idle()
    ran = await run_all(engine, "W")
    assert len(ran) == 3


async def test_add_repeated_with_its_token_adds_nothing_twice(engine: Engine) -> None:
    """Defect 8, in the script: a repeated add (a retry after a lost reply) returns the first
    reply and writes nothing."""
    token = new_token()
    entries = [("t", "A", tag_id("A"), "1"), ("t", "A", tag_id("A"), "2")]
    first = await engine.scripts.add(token, entries)
    again = await engine.scripts.add(token, entries)
    assert again.ids == first.ids
    assert await engine.redis.llen(engine.keys.tag_queue("A")) == 2
    assert await engine.redis.hget(engine.keys.counts, "pending") == "2"


@pytest.mark.parametrize("call", ["add", "add_bulk", "cancel", "requeue_failed", "pause"])
async def test_a_lost_reply_applies_a_producer_call_once(
    private_redis: RedisServer, queue_name: str, call: str
) -> None:
    """Defect 8: redis-py re-sent ``add`` when the connection dropped after Redis ran it: the
    task existed twice and ``add`` returned normally. The proxy runs the call and cuts the
    connection before its reply; the library's retry must not apply it again."""
    proxy = await Proxy(private_redis.port).start()
    settings = QueueSettings(
        _env_file=None,
        redis_url=proxy.url,
        pending_queue_name=queue_name,
        app_role="SCHEDULER",
        max_attempts=1,
    )
    direct = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        async with AffinityQueue(settings) as aq:
            q = aq.queue()
            warm = await q.add({"type": "t", "identifyTag": "warm"})  # the script is loaded
            keys = settings.keys
            match call:
                case "add":
                    proxy.lose_reply_of(b"EVALSHA")
                    await q.add({"type": "t", "identifyTag": "A"})
                    assert await direct.llen(keys.tag_queue("A")) == 1
                case "add_bulk":
                    proxy.lose_reply_of(b"EVALSHA")
                    await q.add_bulk([{"type": "t", "identifyTag": "A"}] * 5)
                    assert await direct.llen(keys.tag_queue("A")) == 5
                case "cancel":
                    proxy.lose_reply_of(b"EVALSHA")
                    assert (await q.cancel(warm.id)).value == "cancelled"
                case "requeue_failed":
                    # A dead letter requeued twice would be requeued then refused: one answer.
                    await direct.hset(keys.job(warm.id), "status", "failed")
                    await direct.lrem(keys.tag_queue("warm"), 1, warm.id)
                    await direct.zadd(keys.failed, {warm.id: 1})
                    proxy.lose_reply_of(b"EVALSHA")
                    assert await q.requeue_failed(warm.id) is True
                    assert await direct.lrange(keys.tag_queue("warm"), 0, -1) == [warm.id]
                case "pause":
                    proxy.lose_reply_of(b"EVALSHA")
                    await q.pause()
                    assert await direct.hget(keys.config, "paused") == "1"
            assert proxy.replies_lost == 1
    finally:
        await direct.aclose()
        await proxy.aclose()


async def test_the_leader_never_scans_the_keyspace(
    private_redis: RedisServer, queue_name: str
) -> None:
    """Defect 9: two full SCANs ran before a new leader's first placement and every
    10 x HEARTBEAT_TIMEOUT; nothing was placed meanwhile."""
    settings = QueueSettings(
        _env_file=None,
        redis_url=private_redis.url,
        pending_queue_name=queue_name,
        heartbeat_interval_ms=100,
        heartbeat_timeout_ms=300,
        election_lock_ttl_ms=1000,
    )
    direct = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await direct.config_resetstat()
        async with AffinityQueue(settings) as aq:
            aq.worker().register_handler("t", lambda payload: None)
            await aq.queue().add_bulk([{"type": "t", "identifyTag": f"t{i}"} for i in range(20)])
            await drained(aq.queue(), 20)
            await asyncio.sleep(0.5)  # several reap rounds (HEARTBEAT_INTERVAL = 0.1 s)
        stats = await direct.info("commandstats")
        assert "cmdstat_scan" not in stats, stats.get("cmdstat_scan")
    finally:
        await direct.aclose()


async def test_one_finish_trims_a_bounded_slice_of_retention(engine: Engine) -> None:
    """Defect 10: lowering KEEP_COMPLETED made one finishing job delete the whole excess in one
    script call (300,000 records: 0.58 s with Redis blocked)."""
    index = engine.keys.queue_prefix + "completed"
    async with engine.redis.pipeline(transaction=False) as pipe:
        for start in range(0, 30_000, 5000):
            pipe.zadd(index, {f"{i}-old": 1 for i in range(start, start + 5000)})
        await pipe.execute()
    await engine.elect(max_batch=10, keep_completed=10)
    await engine.register("W")
    await engine.add("A", 1)
    await engine.dispatch()
    job = await engine.take("W")
    await engine.take("W", job)
    left = await engine.redis.zcard(index)
    assert 30_001 - 2 * 20 <= left < 30_001  # a slice of the expired, a slice of the excess


async def test_reap_hands_back_a_long_queue_in_slices_and_in_order(engine: Engine) -> None:
    """Defect 10: one reap handed back REAP_BATCH x MAX_BATCH_SIZE jobs in one call."""
    await engine.elect(max_batch=5000)
    await engine.register("dead", lease_ms=1500)
    async with engine.backlog():
        ids = await engine.add("A", 3000)
    assert await engine.dispatch() == 1000  # the budget of one call
    while await engine.dispatch():
        pass
    active = await engine.take("dead")
    assert active is not None and active.id == ids[0]
    expiry = float(await engine.redis.zscore(engine.keys.workers, "dead") or 0)
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > expiry, what="the lease to expire")
    calls = []
    while True:
        _, jobs, more, _ = await engine.scripts.reap(engine.fence, 500)
        calls.append(jobs)
        assert jobs <= 500
        if not more:
            break
    assert sum(calls) == 3000 and len(calls) >= 6
    assert await engine.redis.lrange(engine.keys.tag_queue("A"), 0, -1) == ids
    assert await engine.redis.zscore(engine.keys.workers, "dead") is None


async def test_cancel_deep_in_a_long_backlog_does_not_search_it(engine: Engine) -> None:
    """Defect 10: cancel ran LREM over the tag's whole backlog. Deep in a long list the job is
    marked and dropped when it reaches the head: it never runs, its neighbours do, in order."""
    await engine.elect(max_batch=10_000)
    await engine.register("W")
    async with engine.backlog():
        ids = await engine.add("A", 3000)
    assert await engine.scripts.cancel(new_token(), ids[1500]) == "cancelled"
    assert await engine.redis.llen(engine.keys.tag_queue("A")) == 3000  # not searched
    ran = await run_all(engine, "W")
    assert [j.id for j in ran] == ids[:1500] + ids[1501:]
    assert await engine.redis.hget(engine.keys.counts, "pending") == "0"


async def test_an_expired_lease_cannot_start_a_job(engine: Engine) -> None:
    """Defect 11: advance checked membership, not expiry: a worker whose lease lapsed started a
    job that would run again after the reap."""
    await engine.elect(max_batch=10)
    await engine.register("W", lease_ms=200)
    await engine.add("A", 2)
    await engine.dispatch()
    expiry = float(await engine.redis.zscore(engine.keys.workers, "W") or 0)
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > expiry, what="the lease to expire")
    with pytest.raises(LeaseLostError):
        await engine.take("W")
    lost, _ = await engine.scripts.heartbeat("epoch", 60_000, ["W"])
    assert lost == ["W"], "an expired lease must not be renewed either"


async def test_a_cancel_requested_on_a_running_job_survives_its_workers_death(
    engine: Engine,
) -> None:
    """Defect 12: a cancel requested on a running job was lost when the job was reaped: it
    became pending and ran again."""
    await engine.elect(max_batch=10)
    await engine.register("dead", lease_ms=200)
    (job_id,) = await engine.add("A", 1)
    await engine.dispatch()
    assert await engine.take("dead") is not None
    assert await engine.scripts.cancel(new_token(), job_id) == "requested"
    expiry = float(await engine.redis.zscore(engine.keys.workers, "dead") or 0)
    await wait_for(lambda: redis_ms(engine.redis), lambda t: t > expiry, what="the lease to expire")
    await engine.scripts.reap(engine.fence, 1000)
    assert (await engine.job(job_id))["status"] == "cancelled"
    assert await engine.redis.llen(engine.keys.tag_queue("A")) == 0


async def test_a_job_id_names_one_job_across_queues_and_a_lost_counter(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    """Defect 13: ids were per-queue counters ("1" existed in every queue) that rolled back when
    Redis lost data, so get_job on an old id could return another job."""
    first = AffinityQueue(make_settings(app_role="SCHEDULER"))
    other_name = make_settings().pending_queue_name + "-other"
    second = AffinityQueue(
        make_settings(
            app_role="SCHEDULER",
            pending_queue_name=other_name,
            worker_queue_prefix=other_name + "-wq",
            worker_state_prefix=other_name + "-ws",
        )
    )
    async with first, second:
        a = await first.queue().add({"type": "t", "identifyTag": "A", "payload": "a"})
        b = await second.queue().add({"type": "t", "identifyTag": "A", "payload": "b"})
        assert a.id != b.id
        # The counter rolls back (a failover to a lagging replica, a restore) and the job goes.
        keys = first.settings().keys
        await redis_client.delete(keys.queue_prefix + "seq", keys.job(a.id))
        c = await first.queue().add({"type": "t", "identifyTag": "A", "payload": "c"})
        assert c.id != a.id
        assert await first.queue().get_job(a.id) is None


async def test_a_process_with_other_worker_prefixes_is_refused_at_start(
    make_settings: SettingsFactory,
) -> None:
    """Defect 14: a process with another WORKER_QUEUE_PREFIX joined the queue; the leader wrote
    worker queues nobody read and the tag was stuck."""
    running = AffinityQueue(make_settings())
    odd = AffinityQueue(make_settings(worker_queue_prefix="elsewhere"))
    async with running:
        await wait_for(
            lambda: running.queue().get_queue_stats(),
            lambda s: s.leader is not None and len(s.workers) == 1,
            what="the queue to run",
        )
        with pytest.raises(ConfigMismatchError) as raised:
            await odd.start()
        message = str(raised.value)
        assert "WORKER_QUEUE_PREFIX='elsewhere' here" in message
        assert f"'{running.settings().worker_queue_prefix}' in the running processes" in message
        await odd.aclose()
    # Once every process of the queue stopped, the layout may change.
    async with AffinityQueue(make_settings(worker_queue_prefix="elsewhere")):
        pass


async def test_register_and_elect_refuse_another_layout_atomically(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    """Defect 14, behind the start check: the scripts themselves refuse, and write nothing."""
    settings = make_settings()
    await Scripts(redis_client, settings.keys, "q").register("w1", 60_000, "h", 1, "e")
    odd = make_settings(worker_state_prefix="elsewhere").keys
    scripts = Scripts(redis_client, odd, "q")
    with pytest.raises(ConfigMismatchError, match="WORKER_STATE_PREFIX='elsewhere'"):
        await scripts.register("w2", 60_000, "h", 1, "e")
    with pytest.raises(ConfigMismatchError):
        await scripts.elect("tok", 1000, "n", "h", 1, TermConfig(max_batch=10))
    assert await redis_client.zrange(settings.keys.workers, 0, -1) == ["w1"]
    assert not await redis_client.exists(settings.keys.leader)
