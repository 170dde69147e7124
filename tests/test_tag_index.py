"""The tag index through the read API: busiest tags, prefix search, dead letters by filter, a tag's
assigned and finished jobs, and running jobs' progress in the stats (the index itself is checked
against the job records by tests/model)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from affinity_queue import AffinityQueue, JobContext, QueueSettings

from .support import wait_for


async def test_busiest_and_prefix_search_see_every_tag_with_work(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(app_role="PRODUCER"))
    async with aq:
        q = aq.queue()
        sizes = {"tenant-a": 5, "tenant-b": 2, "tenant-ab": 1, "other": 3, "ténant": 1}
        jobs = {
            tag: await q.add_bulk([{"type": "t", "identifyTag": tag}] * n)
            for tag, n in sizes.items()
        }
        await q.pause_tag("tenant-b")  # not placeable: still a tag with work
        assert await q.busiest_tags(2) == [("tenant-a", 5), ("other", 3)]
        assert await q.count_tags() == 5
        found, complete = await q.search_tags("tenant-")
        assert sorted(found) == ["tenant-a", "tenant-ab", "tenant-b"] and complete
        first, complete = await q.search_tags("tenant-", limit=2)
        assert first == ["tenant-a", "tenant-ab"] and not complete  # byte order, then cut
        assert (await q.search_tags("té"))[0] == ["ténant"]
        (info,) = await q.get_tags(["tenant-a"])
        assert info.backlog == info.pending == 5

        for job in jobs["other"]:
            await q.cancel(job.id)
        await q.cancel(jobs["tenant-a"][2].id)  # from the middle of the list
        assert await q.busiest_tags(2) == [("tenant-a", 4), ("tenant-b", 2)]
        assert (await q.search_tags("oth"))[0] == []
        assert await q.count_tags() == 4


async def test_dead_letters_filter_and_page_through_their_indexes(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(worker_count=2))

    @aq.handler("a")
    async def fail_a(payload: int) -> None:
        raise ValueError(payload)

    @aq.handler("b")
    async def fail_b(payload: int) -> None:
        raise KeyError(payload)

    async with aq:
        q = aq.queue()
        await q.add_bulk(
            [{"type": "a", "identifyTag": f"t{i % 2}", "payload": i} for i in range(7)]
            + [{"type": "b", "identifyTag": "t0", "payload": i} for i in range(3)]
        )
        await wait_for(q.get_queue_stats, lambda s: s.failed == 10, what="10 dead letters")
        by_type = await q.find_failed(type="a", limit=100)
        assert by_type.total == 7 and {j.type for j in by_type.jobs} == {"a"}
        by_error = await q.find_failed(error_type="KeyError", limit=100)
        assert by_error.total == 3 and {j.type for j in by_error.jobs} == {"b"}
        both = await q.find_failed(type="a", identify_tag="t0", limit=100)
        assert sorted(j.payload for j in both.jobs) == [0, 2, 4, 6]  # type: ignore[type-var]

        seen, cursor = [], 0
        while True:  # pages of 3, newest first, every dead letter of type a once
            page = await q.find_failed(type="a", cursor=cursor, limit=3)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [j.id for j in by_type.jobs] and len(seen) == 7

        assert await q.delete_failed(seen[1])  # leaves every index it was in
        assert await q.requeue_failed(seen[0])  # leaves them, then fails again and rejoins
        await wait_for(q.get_queue_stats, lambda s: s.failed == 11, what="the requeued one")
        for page in (
            await q.find_failed(type="a", limit=100),
            await q.find_failed(error_type="ValueError", limit=100),
        ):
            ids = [j.id for j in page.jobs]
            assert page.total == 6 and ids[0] == seen[0] and seen[1] not in ids


async def test_a_tags_page_data_and_running_progress(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_batch_size=10))
    release = asyncio.Event()

    @aq.handler("t")
    async def work(payload: int, ctx: JobContext) -> int:
        await ctx.set_progress({"step": payload})
        await release.wait()
        return payload

    async with aq:
        q = aq.queue()
        jobs = await q.add_bulk([{"type": "t", "identifyTag": "x", "payload": i} for i in range(3)])
        stats = await wait_for(
            q.get_queue_stats,
            lambda s: any(w.active_job_progress for w in s.workers),
            what="the first job's progress",
        )
        (w,) = stats.workers
        assert w.active_job_id == jobs[0].id and w.active_job_progress == {"step": 0}
        assert w.active_job_started_at is not None
        assigned = await q.list_tag_assigned("x")
        assert [j.id for j in assigned] == [jobs[1].id, jobs[2].id]
        assert await q.busiest_tags() == [("x", 2)]  # queued to the worker: still waiting
        release.set()
        await wait_for(q.get_queue_stats, lambda s: s.completed == 3, what="3 completed")
        finished = await q.list_tag_finished("x")
        assert [j.id for j in finished] == [j.id for j in reversed(jobs)]
        assert await q.busiest_tags() == [] and await q.list_tag_assigned("x") == []


async def test_a_bulk_action_with_no_bound_finds_every_match(
    make_settings: Callable[..., QueueSettings],
) -> None:
    """match_failed with no bound (the CLI's --all) walks the index in windows to the end."""
    aq = AffinityQueue(make_settings(worker_count=1))

    @aq.handler("a")
    async def fail(payload: int) -> None:
        raise ValueError(payload)

    async with aq:
        q = aq.queue()
        await q.add_bulk([{"type": "a", "identifyTag": "t", "payload": i} for i in range(5)])
        await wait_for(q.get_queue_stats, lambda s: s.failed == 5, what="5 dead letters")
        for filters in ({}, {"type": "a"}, {"type": "a", "error_type": "ValueError"}):
            ids, more = await q.match_failed(**filters, limit=sys.maxsize)  # type: ignore[arg-type]
            assert len(set(ids)) == 5 and not more
