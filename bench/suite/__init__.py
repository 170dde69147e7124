"""The suite against the peers (issue 6): W1-W6 for affinity-queue and each peer, in one run.

    .venv/bin/python -m bench.suite                       # full run: JSON + docs/benchmarks.md
    .venv/bin/python -m bench.suite --quick               # small sizes: checks the suite works
    .venv/bin/python -m bench.suite --only w2,w3,saq,affinity-queue

Every system runs against the same private redis-server, flushed before each measurement. The
producer side runs in this process; workers run as subprocesses started with each system's own
command (``bench/peers/<system>.py`` says which), concurrency 20 per process. Every task is a
no-op that appends its id and start time to a file (``bench/peers/probe.py``), the same for all.

- W1 enqueue: one by one (each awaited), 100 in flight, and the native bulk call if any.
- W2 drain: the tasks W1 queued (one by one, then 100 in flight) drained by 1, then 2 worker
  processes; the rate is from the first task starting to the last one finishing.
- W3 latency: a steady rate against idle workers; time from the enqueue call returning to the
  task starting.
- W4 keyed: chains of tasks that must run in order, one at a time per chain, queued first.
- W5 backlog (ours): the placement rate against backlogs and tag counts (``bench.core``'s).
- W6 hot tag (ours): one hot tag and many cold ones; how long the cold tasks wait; the hot tag
  with a per-task handler, then with a batch handler.

A measurement of a slow system stops after ``cap_s`` seconds; its rate is over what it did in
that time, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ("baseline", "w1", "w2", "w3", "w4", "w5", "w6")


@dataclass(frozen=True, slots=True)
class Config:
    tasks: int = 20_000
    inflight: int = 100
    latency_rate: int = 500
    latency_s: float = 10.0
    keyed_chains: int = 200
    keyed_length: int = 50
    hot_tasks: int = 10_000
    cold_tags: int = 500
    cold_per_tag: int = 10
    hot_batch_binding: int = 1_000
    """MAX_BATCH_SIZE of W6 with a batch handler: how many hot tasks one binding runs."""
    placement_pending: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    placement_tags: tuple[int, ...] = (10, 10_000, 100_000)
    placement_tags_pending: int = 1_500_000
    placement_placed: int = 20_000
    placement_runs: int = 3
    baseline_ops: int = 20_000
    cap_s: float = 20.0
    """Longest time one measurement of one system may take (after its first task starts)."""
    warmup: int = 20
    """Tasks run before a latency or keyed measurement, so that the workers are up and idle."""
    runs: int = 1
    """Runs of W1-W4 and W6 (medians reported). One full run takes about 7 minutes here: the
    issue's budget is about 15, so one run by default."""


QUICK = Config(
    tasks=2_000,
    latency_s=2.0,
    keyed_chains=40,
    keyed_length=10,
    hot_tasks=1_000,
    cold_tags=50,
    cold_per_tag=10,
    placement_pending=(1_000, 20_000),
    placement_tags=(10, 1_000),
    placement_tags_pending=20_000,
    placement_placed=2_000,
    placement_runs=1,
    baseline_ops=4_000,
    cap_s=5.0,
)
