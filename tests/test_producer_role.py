"""APP_ROLE=PRODUCER: a process that only adds and reads: no election, no workers, no
maintenance, no periodic tasks; asking it for workers names its role."""

from __future__ import annotations

import sys

import pytest

from affinity_queue import AffinityQueue, JobContext, QueueSettings, Role, RoleError, cli
from affinity_queue.fastapi import get_worker_service

from .app_support import REPO


def test_app_role_producer_is_read_in_any_case(monkeypatch) -> None:
    monkeypatch.setenv("APP_ROLE", "producer")
    s = QueueSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.app_role is Role.PRODUCER
    assert not s.app_role.schedules and not s.app_role.works
    assert [r for r in Role if r.schedules] == [Role.SCHEDULER, Role.BOTH]
    assert [r for r in Role if r.works] == [Role.WORKER, Role.BOTH]


async def test_a_producer_adds_and_reads_while_another_process_runs_the_tasks(
    make_settings,
) -> None:
    producer = AffinityQueue(make_settings(app_role="PRODUCER"))
    both = AffinityQueue(make_settings(app_role="BOTH"))
    ran: list[str] = []

    @producer.handler("t")  # declaring handlers is allowed in any role: modules are shared
    @both.handler("t")
    async def t(payload: dict, ctx: JobContext) -> None:
        ran.append(ctx.worker_id)

    producer.add_periodic(every_s=1, type="t", identify_tag="beat")
    async with producer:
        with pytest.raises(RoleError, match=r"queue 'default' runs APP_ROLE=PRODUCER"):
            producer.worker()
        # Nothing was started: no election candidate, no worker slots, no heartbeats.
        assert producer.scheduler()._task is None
        assert producer._get("default").worker._slots == {}
        job = await producer.queue().add({"type": "t", "identifyTag": "a"})
        assert (await producer.queue().get_queue_stats()).leader is None
        async with both:
            assert await producer.queue().wait_for(job.id, timeout_s=10) is None
            stats = await producer.queue().get_queue_stats()
            assert stats.leader is not None
            assert stats.leader.node_id == both.scheduler().node_id
            assert {w.worker_id for w in stats.workers} == set(both.worker().worker_ids)
            assert set(ran) <= set(both.worker().worker_ids)
        assert not producer.scheduler().is_leader


async def test_the_worker_dependency_in_a_producer_names_the_role(make_settings) -> None:
    aq = AffinityQueue(make_settings(app_role="PRODUCER"))

    class Conn:
        class state:
            affinity_queue = aq

    with pytest.raises(RoleError, match=r"APP_ROLE=PRODUCER.*set APP_ROLE=WORKER or BOTH"):
        await get_worker_service(Conn())  # type: ignore[arg-type]


def test_the_worker_command_refuses_a_producer(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("REDIS_URL", "memory://")
    monkeypatch.setenv("APP_ROLE", "PRODUCER")
    sys.modules.pop("example_app.main", None)
    try:
        assert cli.main(["worker", "example_app.main:aq", "--app-dir", str(REPO)]) == 2
    finally:
        sys.modules.pop("example_app.main", None)
    err = capsys.readouterr().err
    assert "example_app.main:aq runs APP_ROLE=PRODUCER" in err
    assert "set APP_ROLE=WORKER, SCHEDULER or BOTH" in err
