"""Redis trouble (issue 7): restarts with and without persistence, and a 5 s freeze. Processes
stay up and resume by themselves; producers get a typed error fast; data loss is reported."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from affinity_queue import JobNotActiveError, QueueUnavailableError
from affinity_queue.keys import tag_id
from affinity_queue.lua import Scripts, TermConfig, new_token

from . import ledger
from .conftest import (
    assert_no_keys_command,
    finished,
    queue_env,
    settings_of,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

TAGS = [f"t{i}" for i in range(8)]
DOWN_S = 3.0


REDIS_TIMEOUT_S = 2.0  # the default REDIS_TIMEOUT: how long a producer call rides out an outage


async def _timed_refusal(producer) -> float:
    """Seconds until a producer's add fails with the typed error."""
    started = time.monotonic()
    with pytest.raises(QueueUnavailableError):
        await producer.add("refused")
    return time.monotonic() - started


async def _start(cluster, server, queue_name, producers):
    env = queue_env(server.url, queue_name, WORKER_COUNT=2)
    c = cluster(env)
    c.spawn("n1")
    c.spawn("n2")
    await c.ready()
    producer = producers(settings_of(env))
    for tag in TAGS:
        await producer.add(tag, 10, sleep_s=0.1)
    await wait_for(lambda: finished(c.runs()) >= 15, limit_s=20, what="work to flow")
    return c, producer


def _outage_logs(c) -> list[int]:
    return [n.stderr().count("Redis unavailable") for n in c.nodes]


async def test_redis_restart_with_aof_loses_nothing(
    redis_factory, cluster, producers, queue_name
) -> None:
    server = redis_factory(appendonly=True)
    c, producer = await _start(cluster, server, queue_name, producers)

    server.kill()  # SIGKILL: only what the AOF holds survives (appendfsync always)
    down_at = time.time()
    refused_s = await _timed_refusal(producer)
    await asyncio.sleep(DOWN_S)  # the outage itself, longer than every lease; not a wait
    server.start()  # same port, same dir
    restarted_at = time.time()
    await producer.wait_completed(limit_s=40)
    resumed = min(r.start for r in c.runs() if r.start > restarted_at)

    assert all(n.alive for n in c.nodes)
    runs = c.runs()
    # A lease that expired during the outage may make a task run twice; never three times.
    ledger.check(runs, producer.expected, await producer.outcomes(), faulty_pids=None)
    for n in c.nodes:
        assert "lost this queue's data" not in n.stderr(), "AOF kept the data: no loss to report"
    print(
        f"\nREDIS restart (AOF): producer refused in {refused_s * 1000:.0f} ms; processing "
        f"resumed {resumed - restarted_at:.3f} s after the restart "
        f"(down {restarted_at - down_at:.2f} s); repeated runs {len(ledger.repeated(runs))}; "
        f"outage warnings per node {_outage_logs(c)}"
    )
    assert refused_s < REDIS_TIMEOUT_S + 1.0  # the library rides out REDIS_TIMEOUT first
    assert resumed - restarted_at < 5.0
    await assert_no_keys_command(server.url)


async def test_redis_frozen_for_5s(redis_factory, cluster, producers, queue_name) -> None:
    server = redis_factory()
    c, producer = await _start(cluster, server, queue_name, producers)
    assert server.proc is not None

    os.kill(server.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        refused_s = await _timed_refusal(producer)
        remaining = 5.0 - (time.monotonic() - frozen_at)
        if remaining > 0:
            await asyncio.sleep(remaining)  # the outage itself, not a wait for a condition
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    thawed_at = time.time()
    await producer.wait_completed(limit_s=40)
    resumed = min(r.start for r in c.runs() if r.start > thawed_at)

    # Work goes on after the outage, for old and new tasks alike.
    for tag in TAGS:
        await producer.add(tag, 2)
    await producer.wait_completed(limit_s=20)
    assert all(n.alive for n in c.nodes)
    runs = c.runs()
    expected = {u: v for u, v in producer.expected.items() if not u.startswith("refused")}
    ledger.check(runs, expected, await producer.outcomes(list(expected)), faulty_pids=None)
    logs = _outage_logs(c)
    print(
        f"\nREDIS frozen 5 s: producer got QueueUnavailableError after {refused_s:.2f} s; "
        f"processing resumed {resumed - thawed_at:.3f} s after; repeated runs "
        f"{len(ledger.repeated(runs))}; outage warnings per node {logs}"
    )
    # Calls in flight just wait up to their socket timeout, so a process may not even notice
    # a 5 s freeze; it must not log once per retry either.
    assert all(count <= 1 for count in logs), f"one warning per outage per process: {logs}"
    assert resumed - thawed_at < 5.0
    assert refused_s < 6.0  # the client's socket timeout; the strict bound is tested below
    await assert_no_keys_command(server.url)


async def test_redis_restart_without_persistence_is_reported(
    redis_factory, cluster, producers, monitors, queue_name
) -> None:
    server = redis_factory(appendonly=False)
    c, producer = await _start(cluster, server, queue_name, producers)
    mon = monitors(server.url, producer.settings)
    first = await mon.new_leader(other_than=None, limit_s=10)

    server.stop()
    server.start()  # empty: the queue's data is gone
    took = await wait_for(
        lambda: all("lost this queue's data" in n.stderr() for n in c.nodes),
        limit_s=15,
        what="every process to report the data loss",
    )
    before = set(producer.expected)
    for tag in TAGS:
        await producer.add(tag, 3)
    new = [uid for uid in producer.expected if uid not in before]
    await producer.wait_completed(limit_s=20, uids=new)

    assert all(n.alive for n in c.nodes)
    expected = {uid: producer.expected[uid] for uid in new}
    runs = [r for r in c.runs() if r.uid in expected]
    ledger.check(runs, expected, await producer.outcomes(new), faulty_pids=set())
    # The fencing number still only grows, though the counter was lost with the data.
    later = await mon.new_leader(other_than=None, limit_s=10)
    assert later.fence is not None and first.fence is not None and later.fence > first.fence
    print(f"\nREDIS restart (no persistence): loss reported by every process within {took:.2f} s")
    await assert_no_keys_command(server.url)


async def test_producer_during_a_freeze_fails_fast_and_says_it_may_have_written(
    redis_factory, producers, queue_name
) -> None:
    """A frozen Redis: ``add`` fails within REDIS_TIMEOUT with ``maybe_written=True`` (the command
    was sent, so Redis may apply it when it thaws), and that is what happens. A refused
    connection fails at once with ``maybe_written=False`` and writes nothing."""
    server = redis_factory()
    producer = producers(settings_of(queue_env(server.url, queue_name, REDIS_TIMEOUT=1000)))
    await producer.add("warm-up")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailableError) as frozen:
            await producer.add("frozen")
        frozen_s = time.monotonic() - started
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    print(f"\nPRODUCER during a freeze: QueueUnavailableError after {frozen_s:.2f} s")
    assert frozen.value.maybe_written
    assert frozen_s < 1.5, f"the producer hung {frozen_s:.2f} s before the error"
    await wait_for(
        lambda: _pending(producer, 2), limit_s=5, what="the frozen add to be applied on thaw"
    )

    server.stop()
    # The first call may go out on a pooled connection the server just closed: it cannot know
    # what became of it. A call that finds no server to connect to knows nothing was written.
    with pytest.raises(QueueUnavailableError):
        await producer.add("refused")
    with pytest.raises(QueueUnavailableError) as refused:
        await producer.add("refused")
    assert not refused.value.maybe_written


async def _pending(producer, n: int) -> bool:
    return (await producer.aq.queue().get_queue_stats()).pending == n


async def test_advance_retried_after_a_lost_reply_strands_no_job(redis_factory, queue_name) -> None:
    """What the worker does when a reply is lost (a timeout while Redis is frozen, then the
    command runs anyway): it calls ``advance`` again. The job the first call started must come
    back, not be left active forever while the worker takes the next one."""
    server = redis_factory()
    settings = settings_of(queue_env(server.url, queue_name))
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        scripts = Scripts(client, settings.keys, "default")
        fence = await scripts.elect("token", 60_000, "node", "host", 1, TermConfig(max_batch=10))
        await scripts.register("w1", 60_000, "host", 1, "epoch")
        await scripts.add(
            new_token(), [("work", "t", tag_id("t"), f'{{"seq": {i}}}') for i in range(3)]
        )
        # The add placed the three on the idle worker (a bare wake-up: it never said what it
        # takes), as dispatch would have.
        assert await client.llen(settings.keys.worker_queue("w1")) == 3
        assert (await scripts.dispatch(fence, 100))[:2] == (0, False)

        first = await scripts.advance("w1", "", "", "", True)  # its reply is "lost"
        again = await scripts.advance("w1", "", "", "", True)
        assert first is not None and again is not None
        assert (again.id, again.attempts) == (first.id, first.attempts)

        second = await scripts.advance("w1", first.id, "completed", "1", True)  # reply "lost"
        assert second is not None
        with pytest.raises(JobNotActiveError):
            await scripts.advance("w1", first.id, "completed", "1", True)
        again = await scripts.advance("w1", "", "", "", True)  # what the worker does next
        assert again is not None and again.id == second.id

        third = await scripts.advance("w1", second.id, "completed", "1", True)
        assert third is not None
        assert await scripts.advance("w1", third.id, "completed", "1", True) is None
        counts = await client.hgetall(settings.keys.counts)
        assert {k: int(v) for k, v in counts.items()} == {
            "pending": 0, "assigned": 0, "active": 0, "completed": 3
        }  # fmt: skip
    finally:
        await client.aclose()
