"""The model-based test (short in CI; long with AQ_MODEL_SECONDS or AQ_MODEL_EXAMPLES).

Environment:
- AQ_MODEL_SECONDS: stop starting examples after this long (default 25; 0 = no time bound)
- AQ_MODEL_EXAMPLES: stop after this many examples (default: none, the time bound decides)
- AQ_MODEL_STEPS: operations per example (default 60)
- AQ_MODEL_SEED: the first example's seed (default random); example i uses seed + i
- AQ_MODEL_FAULTS: the share of script calls that get a fault (default 0.25)
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from affinity_queue import QueueSettings

from ..redis_server import RedisServer
from .harness import Figures, Harness

SECONDS = float(os.environ.get("AQ_MODEL_SECONDS", "25"))
EXAMPLES = int(os.environ.get("AQ_MODEL_EXAMPLES", "0"))
STEPS = int(os.environ.get("AQ_MODEL_STEPS", "60"))
SEED = int(os.environ.get("AQ_MODEL_SEED", str(random.randrange(10**9))))
FAULT_RATE = float(os.environ.get("AQ_MODEL_FAULTS", "0.25"))


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private server: the fault layer sets its maxmemory to answer OOM."""
    s = RedisServer().start()
    yield s
    s.cleanup()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(server.url, decode_responses=True)
    await c.config_set("maxmemory-policy", "noeviction")
    yield c
    await c.config_set("maxmemory", 0)
    await c.aclose()


def settings_for(server: RedisServer, seed: int) -> QueueSettings:
    name = f"m{seed}"
    return QueueSettings(
        _env_file=None,
        redis_url=server.url,
        pending_queue_name=name,
        worker_queue_prefix=f"{name}-wq",
        worker_state_prefix=f"{name}-ws",
    )


@pytest.mark.timeout(int(SECONDS) + 600 if SECONDS else 0)
async def test_random_operations_under_faults_keep_every_invariant(
    server: RedisServer, client: aioredis.Redis
) -> None:
    figures = Figures()
    started = time.monotonic()
    seed = SEED
    print(f"\nmodel: first seed {SEED}, {STEPS} steps per example, fault rate {FAULT_RATE}")
    try:
        while (not EXAMPLES or figures.examples < EXAMPLES) and (
            not SECONDS or time.monotonic() - started < SECONDS
        ):
            h = Harness(client, settings_for(server, seed), seed, FAULT_RATE)
            await h.run(STEPS, flood=seed % 50 == 0)
            figures.add(h)
            seed += 1
    finally:
        elapsed = time.monotonic() - started
        print(
            f"model: {figures.examples} examples (seeds {SEED}..{seed}), {figures.steps} steps, "
            f"{figures.script_calls} script calls in {elapsed:.1f} s\n"
            f"  operations: {dict(figures.ops.most_common())}\n"
            f"  faults: {dict(figures.faults.most_common())}\n"
            f"  repeats compared: {dict(figures.repeats_checked.most_common())}"
        )
    assert figures.examples > 0
