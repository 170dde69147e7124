"""Calls of one script made in the same event-loop turn share one round trip."""

from __future__ import annotations

import asyncio

from affinity_queue.lua.coalesce import Coalesced


async def test_calls_in_one_turn_share_a_pipeline_and_keep_their_own_results(
    redis_client,
) -> None:
    script = redis_client.register_script(
        "if ARGV[1] == 'boom' then return redis.error_reply('boom') end "
        "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    )
    key = "coalesce-test:{t}:counter"
    calls = Coalesced(redis_client, script, [key])
    runs = 0
    real_run = calls._run

    async def counted(*args, **kwargs):
        nonlocal runs
        runs += 1
        return await real_run(*args, **kwargs)

    calls._run = counted  # type: ignore[method-assign]
    await script(keys=[key], args=[0])  # loaded (a flush mid-run: tests/lua/test_scripts.py)
    try:
        results = await asyncio.gather(
            *(calls(n) for n in (1, 2, 3)), calls("boom"), return_exceptions=True
        )
        assert results[:3] == [1, 3, 6] and "boom" in str(results[3])
        assert runs == 1, "four calls in one turn took more than one pipeline"
        assert await calls(10) == 16 and runs == 2
    finally:
        await redis_client.delete(key)
