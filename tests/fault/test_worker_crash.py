"""Workers are leases (issue 3): a worker process killed or paused mid-batch loses its jobs to
another worker, in their order; the interrupted job runs again with a higher attempt count."""

from __future__ import annotations

import signal
from functools import partial

import pytest
import redis.asyncio as aioredis

from . import ledger
from .conftest import (
    HEARTBEAT_MS,
    HEARTBEAT_TIMEOUT_MS,
    assert_no_keys_command,
    queue_env,
    settings_of,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

RECOVERY_BOUND_S = (HEARTBEAT_TIMEOUT_MS + HEARTBEAT_MS) / 1000 + 1.5
"""Lease expiry after the last heartbeat, plus one reap interval, plus the next start."""


async def _scheduler_and_two_workers(cluster, env):
    c = cluster(env)
    c.spawn("sched", role="SCHEDULER")
    c.spawn("w1", role="WORKER")
    c.spawn("w2", role="WORKER")
    await c.ready()
    return c


async def _victim_mid_batch(c, producer, tag: str):
    """Run a batch of ``tag`` until its second task is running; return (node, that run)."""
    # 1.2 s per task: the kill must land while the second task runs, under any load.
    await producer.add(tag, 6, sleep_s=1.2)
    await producer.add("other", 4)

    def second_started():
        return next((r for r in c.runs() if r.tag == tag and r.seq == 1), None)

    await wait_for(second_started, limit_s=15, what=f"{tag} seq 1 to start")
    run = second_started()
    victim = next(n for n in c.nodes if n.pid == run.pid)
    return victim, run


async def test_sigkill_worker_mid_batch(redis_factory, cluster, producers, queue_name) -> None:
    server = redis_factory()
    env = queue_env(server.url, queue_name, MAX_BATCH_SIZE=10)
    c = await _scheduler_and_two_workers(cluster, env)
    producer = producers(settings_of(env))

    victim, interrupted = await _victim_mid_batch(c, producer, "batch")
    stats = await producer.aq.queue().get_queue_stats()
    mine = [w for w in stats.workers if w.pid == victim.pid and w.current_identify_tag == "batch"]
    assert mine and mine[0].queue_length >= 1, f"nothing queued to the victim: {stats.workers}"
    killed_at = victim.send(signal.SIGKILL)

    def rerun():
        return next((r for r in c.runs() if r.uid == interrupted.uid and r.pid != victim.pid), None)

    await wait_for(rerun, limit_s=15, what="the interrupted task to run again")
    recovery_s = rerun().start - killed_at
    await producer.wait_completed(limit_s=30)

    runs = c.runs()
    assert rerun().attempt == 2, "the handler must see the new attempt number"
    assert [r.attempt for r in runs if r.uid == interrupted.uid] == [1, 2]
    ledger.check(runs, producer.expected, await producer.outcomes(), faulty_pids={victim.pid})
    again = ledger.repeated(runs)
    assert set(again) == {interrupted.uid}, f"only the interrupted task may run twice: {again}"
    print(f"\nRECOVERY worker SIGKILL: interrupted task rerun {recovery_s:.3f} s after the kill")
    assert recovery_s < RECOVERY_BOUND_S
    await assert_no_keys_command(server.url)


async def test_sigkill_worker_mid_batch_call(redis_factory, cluster, producers, queue_name) -> None:
    """A batch handler's worker killed during the call: every task of that batch is delivered
    again elsewhere (at least once), in order, and the tasks queued behind it run once."""
    server = redis_factory()
    env = queue_env(server.url, queue_name, MAX_BATCH_SIZE=10, BATCH_MAX_SIZE="4")
    c = await _scheduler_and_two_workers(cluster, env)
    producer = producers(settings_of(env))
    # 1 s per task: the kill must land before the call's third task starts, under any load.
    uids = await producer.add("bulk", 6, sleep_s=1.0, type_="work-batch")

    def into_the_batch():
        return [r for r in c.runs() if r.tag == "bulk"]

    await wait_for(lambda: len(into_the_batch()) == 2, limit_s=15, what="the batch's 2nd task")
    victim = next(n for n in c.nodes if n.pid == into_the_batch()[0].pid)
    victim.send(signal.SIGKILL)
    await producer.wait_completed(limit_s=30)

    runs = c.runs()
    ledger.check(runs, producer.expected, await producer.outcomes(), faulty_pids={victim.pid})
    started = [r.uid for r in runs if r.pid == victim.pid]
    assert started == uids[:2], started
    again = ledger.repeated(runs)
    assert set(again) == set(started), f"what the killed call started, and only it, reruns: {again}"
    reruns = [r for r in runs if r.pid != victim.pid]
    assert [r.uid for r in reruns] == uids, "the batch's tasks run again first, in order"
    # The whole batch of 4 had been delivered (an attempt each), the 2 behind it had not.
    assert [r.attempt for r in reruns] == [2, 2, 2, 2, 1, 1]
    await assert_no_keys_command(server.url)


async def test_sigstop_worker_past_its_lease(redis_factory, cluster, producers, queue_name) -> None:
    server = redis_factory()
    env = queue_env(server.url, queue_name, MAX_BATCH_SIZE=10)
    c = await _scheduler_and_two_workers(cluster, env)
    producer = producers(settings_of(env))

    victim, paused = await _victim_mid_batch(c, producer, "batch")
    stopped_at = victim.send(signal.SIGSTOP)
    batch = [uid for uid, (tag, _) in producer.expected.items() if tag == "batch"]
    # Its tasks run elsewhere while it is frozen, the paused one included.
    await producer.wait_completed(limit_s=30, uids=batch)
    rerun = next(r for r in c.runs() if r.uid == paused.uid and r.pid != victim.pid)
    takeover_s = rerun.start - stopped_at
    victim.send(signal.SIGCONT)

    # It finishes the paused run, its acknowledgement is rejected, it re-registers.
    await wait_for(
        lambda: "lost its lease" in victim.stderr(), limit_s=10, what="the victim to learn"
    )
    late = next(r for r in c.runs() if r.uid == paused.uid and r.pid == victim.pid)
    assert late.end is not None and late.end > rerun.end
    outcome = (await producer.outcomes([paused.uid]))[paused.uid]
    assert (outcome.worker, outcome.attempts) == (rerun.worker, 2), "the late ack was accepted"
    job = await producer.aq.queue().get_job(producer.job_ids[paused.uid])
    assert job is not None and job.result["pid"] == rerun.pid

    # It came back as a fresh worker and works again: both workers idle, four new tags.
    async def both_idle():
        stats = await producer.aq.queue().get_queue_stats()
        return sorted(w.status for w in stats.workers) == ["idle", "idle"]

    await wait_for(both_idle, limit_s=10, what="both workers idle")
    since = len(c.runs())
    for i in range(4):
        await producer.add(f"after{i}", 2)
    await producer.wait_completed(limit_s=20)
    assert any(r.pid == victim.pid for r in c.runs()[since:]), "the victim never worked again"

    runs = c.runs()
    ledger.check(runs, producer.expected, await producer.outcomes(), faulty_pids={victim.pid})
    assert set(ledger.repeated(runs)) == {paused.uid}
    print(f"\nRECOVERY worker SIGSTOP: paused task rerun elsewhere {takeover_s:.3f} s after")
    assert takeover_s < RECOVERY_BOUND_S
    await assert_no_keys_command(server.url)


async def test_a_wake_up_read_after_the_lease_lapsed_starts_nothing(
    redis_factory, cluster, producers, queue_name
) -> None:
    """An idle worker frozen in its wait: the scheduler binds it and starts its run, which the
    pending wait takes (the run waits in the frozen process's socket), the lease lapses and the
    leader takes the job back. Resumed, the worker must not run what its wake-up carried: the
    job runs once, as its second attempt."""
    server = redis_factory()
    env = queue_env(server.url, queue_name, WORKER_COUNT=1)
    c = cluster(env)
    c.spawn("sched", role="SCHEDULER")
    victim = c.spawn("w1", role="WORKER")
    await c.ready()
    producer = producers(settings_of(env))
    queue, keys = producer.aq.queue(), settings_of(env).keys
    direct = aioredis.Redis.from_url(server.url, decode_responses=True)

    async def idle() -> str | None:
        [w] = (await queue.get_queue_stats()).workers or [None]
        return w.worker_id if w is not None and w.status == "idle" else None

    async def status(job_id: str) -> tuple[str, int] | None:
        job = await queue.get_job(job_id)
        return None if job is None else (job.status, job.attempts)

    async def is_(job_id: str, expected: tuple[str, int]) -> bool:
        return await status(job_id) == expected

    async def waiting_in_blpop() -> bool:
        return any(x["cmd"] == "blpop" and "b" in x["flags"] for x in await direct.client_list())

    try:
        for attempt in range(5):  # the wait may time out just before the run arrives: again
            await wait_for(idle, limit_s=10, what="the worker to wait")
            wid = await idle()
            victim.send(signal.SIGSTOP)
            try:
                blocked = await waiting_in_blpop()
                [uid] = await producer.add(f"late{attempt}", 1)
                job_id = producer.job_ids[uid]
                await wait_for(
                    partial(is_, job_id, ("active", 1)), limit_s=5, what="the carried run"
                )
                taken = blocked and await direct.llen(keys.worker_wake(wid)) == 0
                if taken:  # the frozen process holds the run in its socket
                    await wait_for(
                        partial(is_, job_id, ("pending", 1)), limit_s=15, what="the reap"
                    )
            finally:
                victim.send(signal.SIGCONT)
            await producer.wait_completed(limit_s=20)
            if taken:
                break
        else:
            pytest.fail("the worker's wait never took the carried run while frozen")
    finally:
        await direct.aclose()
    await wait_for(
        lambda: "lost its lease" in victim.stderr(), limit_s=10, what="the worker to learn"
    )
    assert "its run of job" not in victim.stderr(), "it ran the carried run, then was refused"
    runs = [(r.attempt, r.pid) for r in c.runs() if r.uid == uid]
    assert runs == [(2, victim.pid)], f"the carried run started after its lease lapsed: {runs}"


async def test_slow_live_worker_is_never_raided(redis_factory, cluster, producers, queue_name):
    """A task that runs longer than HEARTBEAT_TIMEOUT keeps its worker: the lease is renewed
    while the handler runs, so the idle worker next to it never gets the task."""
    server = redis_factory()
    env = queue_env(server.url, queue_name)
    c = cluster(env)
    sched = c.spawn("sched", role="SCHEDULER")
    c.spawn("w1", role="WORKER")
    c.spawn("w2", role="WORKER")
    await c.ready()
    producer = producers(settings_of(env))
    slow_s = 2 * HEARTBEAT_TIMEOUT_MS / 1000
    await producer.add("slow", 2, sleep_s=slow_s)
    await producer.wait_completed(limit_s=3 * slow_s + 10)
    runs = c.runs()
    ledger.check(runs, producer.expected, await producer.outcomes(), faulty_pids=set())
    assert not ledger.repeated(runs)
    assert "recovered" not in sched.stderr()
