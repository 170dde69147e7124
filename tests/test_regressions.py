"""Regression tests for bugs found in review: each fails on the engine before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from affinity_queue import AffinityQueue, QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import Scripts, TermConfig, new_token, script_source
from affinity_queue.queue import QueueService

from .engine import Engine, redis_ms
from .redis_server import RedisServer
from .support import wait_for

SettingsFactory = Callable[..., QueueSettings]
T = TypeVar("T")


def reading(get: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A ``wait_for`` probe of a value this process holds."""

    async def probe() -> T:
        return get()

    return probe


def task(tag: str, payload: Any = None) -> dict[str, Any]:
    return {"type": "t", "identifyTag": tag, "payload": payload}


async def test_a_lost_wake_up_reply_does_not_strand_a_bound_worker(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 1: a wake-up token popped but its reply lost left the worker bound with jobs forever."""
    settings = make_settings(worker_count=1)
    aq = AffinityQueue(settings)
    done: list[int] = []

    @aq.handler("t")
    async def handle(payload: int) -> None:
        done.append(payload)

    wake_prefix = settings.keys.worker_wake_prefix
    blocking = aq.worker()._blocking
    real_blpop = blocking.blpop
    seen = {"waits": 0, "lost": 0}

    async def lossy_blpop(keys: list[str], **kwargs: Any) -> Any:
        reply = await real_blpop(keys, **kwargs)
        if keys[0].startswith(wake_prefix):
            seen["waits"] += 1
            if reply and not seen["lost"]:
                seen["lost"] += 1  # the token is gone from Redis; the worker never hears of it
                raise RedisTimeoutError("reply lost (simulated)")
        return reply

    monkeypatch.setattr(blocking, "blpop", lossy_blpop)
    async with aq:
        # Only once the worker waits for its wake-up can the binding's token be the one lost.
        await wait_for(
            reading(lambda: seen["waits"]), lambda n: n > 0, timeout_s=5, what="worker waits"
        )
        await aq.queue().add_bulk(task("A", i) for i in range(3))
        await wait_for(
            reading(lambda: list(done)),
            lambda d: d == [0, 1, 2],
            timeout_s=4,
            what="the jobs of the worker whose wake-up was lost",
        )
    assert seen["lost"] == 1


async def test_heartbeats_survive_an_out_of_memory_redis(
    make_settings: SettingsFactory,
    private_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bug 2: an OOM error from the heartbeat script killed the heartbeat task for good."""
    settings = make_settings(redis_url=private_redis.url, worker_count=2)
    aq = AffinityQueue(settings)
    done: list[int] = []

    @aq.handler("t")
    async def handle(payload: int) -> None:
        done.append(payload)

    worker = aq.worker()
    real_heartbeat = worker._scripts.heartbeat
    oom: list[OutOfMemoryError] = []

    async def watched_heartbeat(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real_heartbeat(*args, **kwargs)
        except OutOfMemoryError as e:
            oom.append(e)
            raise

    monkeypatch.setattr(worker._scripts, "heartbeat", watched_heartbeat)
    admin = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    workers_key = settings.keys.workers
    lease_ms = settings.heartbeat_timeout_ms

    async def leases() -> dict[str, float]:
        pairs: list[tuple[str, float]] = await admin.zrange(workers_key, 0, -1, withscores=True)  # type: ignore[assignment]
        return dict(pairs)

    try:
        async with aq:
            await wait_for(leases, lambda ls: len(ls) == 2, timeout_s=5, what="2 leases")
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", 1)
            try:
                await wait_for(
                    reading(lambda: len(oom)),
                    lambda n: n >= 2,
                    timeout_s=3,
                    what="a heartbeat after the first refused with OOM (the loop goes on)",
                )
            finally:
                await admin.config_set("maxmemory", 0)
            recovered_ms = await redis_ms(admin)

            async def renewed() -> tuple[list[str], dict[str, float]]:
                return worker.worker_ids, await leases()

            # Every worker of this process holds a lease renewed after the OOM window.
            await wait_for(
                renewed,
                lambda r: (
                    len(r[0]) == 2 and all(r[1].get(w, 0) >= recovered_ms + lease_ms for w in r[0])
                ),
                timeout_s=3,
                what="leases renewed after the OOM window",
            )
            await aq.queue().add_bulk([task("A", 1), task("B", 2)])
            await wait_for(
                reading(lambda: sorted(done)),
                lambda d: d == [1, 2],
                timeout_s=4,
                what="jobs added after the OOM window",
            )
    finally:
        await admin.aclose()


async def test_a_retiring_worker_whose_job_is_retried_strictly_gets_no_new_work(
    engine: Engine,
) -> None:
    """Bug 3: a stopping worker released by a strict retry went back to the idle set."""
    await engine.elect(max_batch=10)
    await engine.register("W1", "W2")
    async with engine.backlog():
        await engine.add("A", 3)
        await engine.add("B", 2)
    assert await engine.dispatch() == 5
    state = await engine.worker_state("W1")
    w = "W1" if state["tag"] == "A" else "W2"
    job = await engine.scripts.advance(w, "", "", "", True)
    assert job is not None
    await engine.scripts.retire(
        w, 1000
    )  # stopping: its queued jobs go back, the active one runs on
    # The active job fails and is retried in strict order; a stopping worker takes nothing next.
    await engine.scripts.advance(w, job.id, "retry", '{"type":"x"}', False, 5000, "strict")
    assert w not in await engine.idle()

    wake_ups = await engine.redis.llen(engine.keys.worker_wake(w))
    await engine.add("C", 2)
    await engine.dispatch()
    assert await engine.queued(w) == []
    assert (await engine.worker_state(w)).get("tag", "") != "C"
    assert await engine.redis.llen(engine.keys.worker_wake(w)) == wake_ups


async def test_a_shorter_strict_retry_does_not_shorten_a_longer_ones_hold(
    engine: Engine,
) -> None:
    """Bug 4: with per-tag concurrency 2, a short strict retry cut a long one's hold of the tag."""
    await engine.elect(max_batch=2, concurrency=2)
    await engine.register("W1", "W2")
    await engine.add("A", 6)
    await engine.dispatch()
    assert len(await engine.queued("W1")) == len(await engine.queued("W2")) == 2
    j1 = await engine.scripts.advance("W1", "", "", "", True)
    j2 = await engine.scripts.advance("W2", "", "", "", True)
    assert j1 is not None and j2 is not None
    await engine.scripts.advance("W1", j1.id, "retry", '{"type":"x"}', True, 60_000, "strict")
    await engine.scripts.advance("W2", j2.id, "retry", '{"type":"x"}', True, 100, "strict")
    due1 = int((await engine.job(j1.id))["due"])
    due2 = int((await engine.job(j2.id))["due"])
    held = await engine.redis.zscore(engine.keys.queue_prefix + "held", tag_id("A"))
    assert held is not None and held >= due1

    # Once the short retry is due, the tag is still held for the long one: nothing is placed.
    await wait_for(lambda: redis_ms(engine.redis), lambda now: now > due2, timeout_s=2, what="due2")
    assert await engine.dispatch() == 0
    assert (await engine.job(j1.id))["status"] == "pending"
    assert await engine.queued("W1") == await engine.queued("W2") == []


async def test_wait_for_reads_a_completed_job_that_trimming_would_have_deleted(
    engine: Engine, redis_server: RedisServer
) -> None:
    """Bug 5: wait_for raised UnknownJobError when KEEP_COMPLETED trimming deleted its record."""
    await engine.elect(max_batch=10, keep_completed=1)
    await engine.register("W1")
    await engine.add("A", 2)
    await engine.dispatch()
    j1 = await engine.scripts.advance("W1", "", "", "", True)
    assert j1 is not None
    service = QueueService("default", engine.settings, engine.redis, engine.scripts)
    try:
        waiting = asyncio.create_task(service.wait_for(j1.id, timeout_s=5))
        await wait_for(
            lambda: engine.job(j1.id),
            lambda j: int(j.get("notify") or 0) > 0,
            timeout_s=2,
            what="watch",
        )
        # Finish j1 then j2 with a blocking client: the event loop (and so the waiter) cannot run
        # in between, so the waiter reads j1 only after j2's finish trimmed the completed index.
        advance = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            script = advance.register_script(script_source("advance"))
            keys = list(engine.keys.script_keys)
            take = ["W1", 1, 0, "strict", 0]  # worker, take 1, no retry, no batch types
            j2 = script(keys=keys, args=[*take, j1.id, "completed", '"r1"', "", "", ""])
            script(keys=keys, args=[*take, j2[0], "completed", '"r2"', "", "", ""])
        finally:
            advance.close()
        assert await waiting == "r1"
    finally:
        await service.aclose()


def test_equal_worker_queue_and_state_prefixes_are_rejected(
    make_settings: SettingsFactory,
) -> None:
    """Bug 6: equal WORKER_QUEUE_PREFIX and WORKER_STATE_PREFIX made their keys collide."""
    with pytest.raises(ValidationError) as raised:
        make_settings(worker_queue_prefix="same", worker_state_prefix="same")
    message = str(raised.value)
    assert "WORKER_QUEUE_PREFIX" in message and "WORKER_STATE_PREFIX" in message


async def test_a_requeued_dead_letter_waits_behind_a_strict_retry_holding_its_tag(
    make_settings, redis_client
) -> None:
    """requeue_failed jumped ahead of the strict retry holding the tag (and broke its hold)."""
    settings = make_settings()
    scripts = Scripts(redis_client, settings.keys, "default")
    fence = await scripts.elect("t", 60_000, "n", "h", 1, TermConfig(max_batch=10))
    await scripts.register("w1", 60_000, "h", 1, "e")
    tid = tag_id("T")
    await scripts.add(new_token(), [("t", "T", tid, "0"), ("t", "T", tid, "1")])
    await scripts.dispatch(fence, 10)
    first = await scripts.advance("w1", "", "", "", True)
    assert first is not None
    await scripts.advance("w1", first.id, "failed", '{"type":"E","message":"m"}', True)
    second = await scripts.advance("w1", "", "", "", True)
    assert second is not None and second.id != first.id
    # The second job retries in strict order, 60 s out: it now holds the tag from its head.
    await scripts.advance("w1", second.id, "retry", '{"type":"E","message":"m"}', True, 60_000)
    assert await scripts.requeue_failed(new_token(), first.id)
    order = await redis_client.lrange(settings.keys.tag_queue("T"), 0, -1)
    assert order == [second.id, first.id]
    assert await redis_client.zscore(settings.keys._key("K_HELD"), tid) is not None


async def test_a_run_whose_job_record_is_gone_starts_the_jobs_that_remain(engine: Engine) -> None:
    """A job id in a worker's queue whose record is gone (deleted by hand, evicted under an
    allkeys policy) is dropped from the run: the jobs after it start with their own fields, and
    neither the counts nor the tag index show the lost job as waiting."""
    await engine.elect(max_batch=5)
    await engine.register("w1")
    async with engine.backlog():
        ids = await engine.add("A", 3)
    assert await engine.dispatch() == 3
    await engine.redis.delete(engine.keys.job(ids[1]))
    run = await engine.scripts.advance_run("w1", [], 3)
    assert [(j.id, j.payload) for j in run] == [(ids[0], "0"), (ids[2], "2")]
    assert not await engine.redis.exists(engine.keys.job(ids[1]))
    counts = await engine.redis.hgetall(engine.keys.counts)
    assert counts.get("assigned", "0") == "0" and counts["active"] == "2", counts
    assert await engine.redis.zscore(engine.keys.backlog, tag_id("A")) is None
