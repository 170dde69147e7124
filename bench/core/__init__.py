"""The core engine's benchmark (issue 2): add, add_bulk, drain, placement, commands, latency.

    .venv/bin/python -m bench.core                  # full run: JSON + docs/benchmarks.md section
    .venv/bin/python -m bench.core --quick          # small sizes, one run: checks the bench works
    .venv/bin/python -m bench.core --only drain --profile

Every workload runs on a private redis-server, flushed before each run, with an async no-op
handler and the library's own code paths (``AffinityQueue``, ``QueueService``, ``WorkerService``),
except the placement rate, which calls the ``dispatch`` script directly so that nothing but
placement is timed. Each figure is the median of ``--runs`` runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from affinity_queue import QueueSettings

WORKERS = 20
MAX_BATCH = 10
WORKLOADS = ("baseline", "add", "add_bulk", "drain", "latency", "placement")


@dataclass(frozen=True, slots=True)
class Config:
    tasks: int = 20_000
    tags: int = 1_000
    inflight: int = 100
    latency_rate: int = 500
    latency_s: float = 5.0
    placement_pending: tuple[int, ...] = (1_000, 100_000, 1_000_000, 3_000_000)
    """Backlog sizes, each over ``placement_tags_fixed`` tags. Past 2**21 keys Redis's main
    hash table doubles to 32 MB and every command slows (cache misses): 3M shows that cliff."""
    placement_tags_fixed: int = 50
    placement_tags: tuple[int, ...] = (10, 10_000, 100_000)
    """Tag counts, each with ``placement_tags_pending`` pending jobs."""
    placement_tags_pending: int = 1_500_000
    """More than one batch per tag at 100,000 tags, and under 2**21 keys in all."""
    placement_placed: int = 20_000
    baseline_ops: int = 20_000
    runs: int = 3


QUICK = Config(
    tasks=2_000,
    tags=100,
    latency_s=1.0,
    placement_pending=(1_000, 20_000),
    placement_tags=(10, 1_000),
    placement_tags_pending=20_000,
    placement_placed=2_000,
    baseline_ops=4_000,
    runs=1,
)


def settings(url: str, **overrides: Any) -> QueueSettings:
    """A queue of its own (random names), 20 workers, batch 10, everything else by default."""
    name = f"bench-{secrets.token_hex(4)}"
    values: dict[str, Any] = {
        "redis_url": url,
        "pending_queue_name": name,
        "worker_queue_prefix": f"{name}-wq",
        "worker_state_prefix": f"{name}-ws",
        "worker_count": WORKERS,
        "app_role": "BOTH",
        "max_batch_size": MAX_BATCH,
    }
    values.update(overrides)
    return QueueSettings(_env_file=None, **values)


def make_tasks(n: int, tags: int) -> list[dict[str, Any]]:
    """``n`` tasks dealt round-robin over ``tags`` tags; the payload is the task's index."""
    return [{"type": "noop", "identifyTag": f"tenant-{i % tags}", "payload": i} for i in range(n)]
