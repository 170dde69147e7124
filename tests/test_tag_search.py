"""Tag search by prefix finds the tags workers hold, not only those waiting to be placed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from affinity_queue import AffinityQueue, QueueSettings

from .support import wait_for


async def test_prefix_search_finds_held_waiting_and_no_other_tags(
    make_settings: Callable[..., QueueSettings],
) -> None:
    aq = AffinityQueue(make_settings(worker_count=1))
    release = asyncio.Event()

    @aq.handler("t")
    async def hold(payload: None) -> None:
        await release.wait()

    async with aq:
        q = aq.queue()
        await q.add({"type": "t", "identifyTag": "tenant-x"})
        await wait_for(
            q.get_queue_stats,
            lambda s: any(w.current_identify_tag == "tenant-x" for w in s.workers),
            what="a worker to hold tenant-x",
        )
        await q.add({"type": "t", "identifyTag": "tenant-y"})  # waits: the one worker is busy
        await q.add({"type": "t", "identifyTag": "other"})
        found, complete = await q.search_tags("tenant-")
        release.set()
    assert sorted(found) == ["tenant-x", "tenant-y"] and complete
