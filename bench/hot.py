"""The hot tag alone (issue 14): how fast one tag drains on one worker, per task and in batches.

    .venv/bin/python -m bench.hot                 # 20,000 tasks per measurement, 3 rounds
    .venv/bin/python -m bench.hot --tasks 5000 --rounds 1

One process runs the queue as a deployment would (20 workers, ``APP_ROLE=BOTH``) against a
private redis-server; the tasks are queued first, all of one tag, and the rate is from the first
handler call to the last one. Four measurements per round, interleaved so that the machine's noise
hits them alike: a per-task handler with ``MAX_BATCH_SIZE`` 10 (the suite's W6 setting: a handover
every 10 tasks) and 1,000, and a batch handler of 100 with ``MAX_BATCH_SIZE`` 100 and 1,000. The
report gives medians and each one's ratio to the per-task figure at 10. The suite's W6 runs the
same tag with 5,000 cold tasks beside it (``python -m bench.suite --only w6,affinity-queue``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from affinity_queue import AffinityQueue

from .env import private_redis
from .peers.affinity import queue_settings

X = "\u00d7"
CASES = (("per task", 10), ("per task", 1_000), ("batch of 100", 100), ("batch of 100", 1_000))
BATCH = 100


async def measure(url: str, name: str, kind: str, max_batch: int, tasks: int) -> float:
    """Tasks/s of one drain of ``tasks`` tasks of one tag."""
    settings = queue_settings(url).model_copy(
        update={
            "pending_queue_name": name,
            "worker_queue_prefix": f"{name}-wq",
            "worker_state_prefix": f"{name}-ws",
            "max_batch_size": max_batch,
        }
    )
    aq = AffinityQueue(settings)
    first = last = 0.0
    count = 0
    all_done = asyncio.Event()

    def ran(n: int) -> None:
        nonlocal first, last, count
        last = time.perf_counter()
        first = first or last
        count += n
        if count >= tasks:
            all_done.set()

    @aq.handler("one")
    async def one(payload: int) -> None:
        ran(1)

    @aq.batch_handler("many", max_size=min(BATCH, max_batch))
    async def many(payloads: list[int]) -> list[None]:
        ran(len(payloads))
        return [None] * len(payloads)

    task_type = "one" if kind == "per task" else "many"
    queue = aq.queue()
    for start in range(0, tasks, 1_000):
        chunk = range(start, min(tasks, start + 1_000))
        await queue.add_bulk(
            [{"type": task_type, "identifyTag": "hot", "payload": i} for i in chunk]
        )
    async with aq:
        await asyncio.wait_for(all_done.wait(), 300)
    await aq.aclose()
    return tasks / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[tuple[str, int], list[float]] = {case: [] for case in CASES}
    with private_redis() as server:
        for r in range(args.rounds):
            for k, (kind, max_batch) in enumerate(CASES):
                name = f"hot-{r}-{k}"
                rate = asyncio.run(measure(server.url, name, kind, max_batch, args.tasks))
                rates[(kind, max_batch)].append(rate)
    base = statistics.median(rates[CASES[0]])
    print(f"| handler | MAX_BATCH_SIZE | tasks/s (median of {args.rounds}) | {X} per task at 10 |")
    print("|---|---|---|---|")
    for (kind, max_batch), got in rates.items():
        median = statistics.median(got)
        print(f"| {kind} | {max_batch:,} | {median:,.0f} | {X}{median / base:.2f} |")


if __name__ == "__main__":
    main()
