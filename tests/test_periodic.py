"""Periodic tasks in one process: declaration errors, cron and interval ticks, the leader's
enqueue and its record, the downtime policy, and the stats. (Across processes and leader kills:
tests/fault/test_periodic_failover.py.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from affinity_queue import AffinityQueue, InvalidScheduleError, JobContext
from affinity_queue.periodic import Missed, schedule

from .support import wait_for

HOUR_MS = 3_600_000


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"cron": "61 * * * *"}, "cron expression '61 * * * *' does not parse: Bad minute"),
        ({"cron": "* * *"}, "has 3 fields; give 5"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "identify_tag": " "}, "its task is invalid: task #0: identifyTag"),
        ({"cron": "* * * * *", "payload": {"x": float("nan")}}, "payload is not JSON"),
        ({}, "give a cron expression or every_s, exactly one"),
        ({"cron": "* * * * *", "every_s": 5}, "exactly one"),
        ({"every_s": 0.5}, "every_s must be a number of seconds from 1"),
        ({"every_s": 5, "missed": "all"}, "missed must be one of once, skip"),
        ({"every_s": 5, "misfire_grace_s": -1}, "misfire_grace_s must be"),
    ],
)
def test_a_bad_schedule_is_refused_at_declaration_naming_it(make_settings, kwargs, says) -> None:
    aq = AffinityQueue(make_settings())
    args = {"type": "t", "identify_tag": "tag", "name": "nightly", **kwargs}
    with pytest.raises(InvalidScheduleError) as e:
        aq.add_periodic(**args)
    assert e.value.schedule == "nightly"
    assert str(e.value).startswith("periodic task 'nightly': ")
    assert says in str(e.value)
    assert aq.scheduler().periodic.schedules == []


def test_two_schedules_of_one_name_are_refused(make_settings) -> None:
    aq = AffinityQueue(make_settings())
    aq.add_periodic(every_s=5, type="t", identify_tag="a")
    aq.add_periodic(every_s=5, type="t", identify_tag="b")  # another default name
    with pytest.raises(InvalidScheduleError, match=r"'t@a'.*already has a periodic task"):
        aq.add_periodic("* * * * *", type="t", identify_tag="a")


def _ms(*args: int, tz=UTC) -> int:
    return round(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_cron_ticks_in_a_time_zone_with_seconds_and_across_dst(make_settings) -> None:
    from zoneinfo import ZoneInfo

    s = make_settings()
    riga = ZoneInfo("Europe/Riga")

    def sched(cron: str, tz: str = "UTC"):
        return schedule("s", None, "null", s, cron=cron, every_s=None, tz=tz, missed="once",
                        misfire_grace_s=None)  # fmt: skip

    every5 = sched("*/5 * * * *")
    assert every5.after(_ms(2024, 1, 1, 0, 5)) == _ms(2024, 1, 1, 0, 10)
    assert every5.at_or_before(_ms(2024, 1, 1, 0, 5)) == _ms(2024, 1, 1, 0, 5)
    assert every5.at_or_before(_ms(2024, 1, 1, 0, 9, 59)) == _ms(2024, 1, 1, 0, 5)
    seconds = sched("*/10 * * * * *")  # six fields: seconds first
    assert seconds.after(_ms(2024, 1, 1, 0, 0, 1)) == _ms(2024, 1, 1, 0, 0, 10)
    # 03:30 local every day; Riga moves from 03:00 to 04:00 on 2024-03-31: that day's run is at
    # 04:00 (the first time after the gap, as Debian cron), then 03:30 again, 23 h 30 min later.
    nightly = sched("30 3 * * *", "Europe/Riga")
    day_before = _ms(2024, 3, 30, 3, 30, tz=riga)
    on_the_day = nightly.after(day_before)
    assert datetime.fromtimestamp(on_the_day / 1000, riga).hour == 4
    assert nightly.after(on_the_day) == _ms(2024, 4, 1, 3, 30, tz=riga)
    hourly = schedule("h", None, "null", s, cron=None, every_s=3600, tz="UTC", missed="once",
                      misfire_grace_s=None)  # fmt: skip
    assert hourly.after(_ms(2024, 1, 1, 0, 0)) == _ms(2024, 1, 1, 1, 0)
    assert hourly.at_or_before(_ms(2024, 1, 1, 0, 59)) == _ms(2024, 1, 1, 0, 0)


async def test_the_leader_enqueues_one_task_per_tick_and_lists_it_in_stats(make_settings) -> None:
    aq = AffinityQueue(make_settings())
    ran: list[str] = []

    @aq.periodic(every_s=1, type="beat", identify_tag="clock", payload={"n": 1})
    async def beat(payload: dict, ctx: JobContext) -> None:
        assert payload == {"n": 1} and ctx.identify_tag == "clock"
        ran.append(ctx.job_id)

    async with aq:
        q = aq.queue()
        stats = await wait_for(q.get_queue_stats, lambda s: s.completed >= 3, what="3 beats")
        (info,) = stats.periodic
        assert (info.name, info.type, info.identify_tag, info.schedule) == (
            "beat@clock", "beat", "clock", "every 1 s"
        )  # fmt: skip
        assert info.last_job_id in ran
        assert info.last_run_at is not None and info.next_run_at is not None
        assert info.next_run_at.timestamp() - info.last_run_at.timestamp() == 1
        ticks = await aq.queue()._redis.zscore(aq.settings().keys.periodic_ticks, "beat@clock")
        assert int(ticks) == round(info.last_run_at.timestamp() * 1000)
    assert len(ran) == len(set(ran)) >= 3


@pytest.mark.parametrize("missed", list(Missed))
async def test_after_downtime_missed_ticks_run_once_or_are_skipped(
    make_settings, redis_client, missed
) -> None:
    settings = make_settings(app_role="SCHEDULER")  # no workers: the task stays pending
    keys = settings.keys
    # The schedule last ran ten hours ago: nine ticks were missed while nothing ran.
    now = time.time_ns() // 1_000_000
    last = now // HOUR_MS * HOUR_MS - 10 * HOUR_MS
    await redis_client.zadd(keys.periodic_ticks, {"hourly": last})
    aq = AffinityQueue(settings)
    aq.add_periodic(every_s=3600, type="h", identify_tag="h", name="hourly", missed=missed,
                    misfire_grace_s=1)  # fmt: skip
    newest = now // HOUR_MS * HOUR_MS
    async with aq:
        recorded = await wait_for(
            lambda: redis_client.zscore(keys.periodic_ticks, "hourly"),
            lambda score: score == newest,
            what="the newest missed tick recorded",
        )
        stats = await aq.queue().get_queue_stats()
    if missed is Missed.ONCE:
        assert stats.pending == 1, "the nine missed ticks ran once"
        assert stats.periodic[0].last_run_at == datetime.fromtimestamp(newest / 1000, UTC)
    else:
        assert stats.pending == 0 and recorded == newest, "the skip was recorded, nothing ran"
        assert stats.periodic[0].last_run_at is None


async def test_a_new_schedule_starts_from_its_first_tick_after_it_is_seen(
    make_settings, redis_client
) -> None:
    settings = make_settings()
    aq = AffinityQueue(settings)
    aq.add_periodic("0 0 1 1 *", type="y", identify_tag="y", name="yearly")
    async with aq:
        stats = await wait_for(aq.queue().get_queue_stats, lambda s: bool(s.periodic))
        (info,) = stats.periodic
        assert info.last_run_at is None and info.last_job_id is None
        assert info.next_run_at == datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
        assert stats.pending == 0
        # A schedule no longer declared is forgotten when a leader's term begins.
        await redis_client.zadd(settings.keys.periodic_ticks, {"removed": 1})
    aq2 = AffinityQueue(settings)
    aq2.add_periodic("0 0 1 1 *", type="y", identify_tag="y", name="yearly")
    async with aq2:
        await wait_for(
            lambda: redis_client.zscore(settings.keys.periodic_ticks, "removed"),
            lambda score: score is None,
            what="the removed schedule forgotten",
        )
