"""One queue process for the fault tests: ``python -m tests.fault.node``.

Builds ``AffinityQueue(QueueSettings())`` from the environment (the queue's own variables), runs
handler type ``work`` (and ``work-batch``, a batch handler of up to ``BATCH_MAX_SIZE`` tasks that
goes through its tasks in order, each as ``work`` does) and keeps two append-only files outside
Redis:

- ``LEDGER_PATH``: one JSON line at the start and at the end of every execution (event, job id,
  tag, seq and uid from the payload, worker id, attempt, pid, time). Lines are written unbuffered
  to the kernel, so they survive SIGKILL.
- ``STATUS_PATH``: ``ready``, then ``lead``/``follow`` whenever this node's leadership changes,
  then ``stopping``/``stopped``.

The handler sleeps ``payload["sleep_s"]`` (default ``TASK_SLEEP_S``). SIGTERM/SIGINT trigger a
graceful ``aclose()``. ``PERIODIC_EVERY_S`` declares a periodic ``work`` task of tag ``periodic``
(name ``work@periodic``); ``PERIODIC_DIE_AFTER_ADDS=n`` makes the node SIGKILL itself, as leader,
right after its n-th periodic add and before the tick is recorded. A real deployment uses the
``affinity-queue`` command instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any, TextIO

from affinity_queue import AffinityQueue, JobContext, QueueSettings

PID = os.getpid()


def _open(env: str) -> TextIO:
    return open(os.environ[env], "a", buffering=1, encoding="utf-8")


def _line(out: TextIO, **fields: Any) -> None:
    out.write(json.dumps({**fields, "pid": PID, "t": time.time()}) + "\n")


def _run_of(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The fields of one execution's ledger lines."""
    return {
        "job": ctx.job_id,
        "tag": ctx.identify_tag,
        "seq": payload["seq"],
        "uid": payload["uid"],
        "worker": ctx.worker_id,
        "attempt": ctx.attempt,
    }


async def _watch_leadership(aq: AffinityQueue, status: TextIO) -> None:
    scheduler = aq.scheduler()
    leading = False
    while True:
        now = scheduler.is_leader
        if now != leading:
            leading = now
            _line(status, ev="lead" if now else "follow", fence=scheduler.fence)
        await asyncio.sleep(0.02)


def _die_after_adds(aq: AffinityQueue, n: int) -> None:
    """SIGKILL this process between the n-th periodic add and the record of its tick."""
    if not n:
        return
    periodic = aq.scheduler().periodic
    record = periodic._record
    adds = 0

    async def record_or_die(*args: Any) -> None:
        nonlocal adds
        adds += 1
        if adds == n:
            os.kill(PID, signal.SIGKILL)
        await record(*args)

    periodic._record = record_or_die  # type: ignore[method-assign]


async def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    ledger, status = _open("LEDGER_PATH"), _open("STATUS_PATH")
    default_sleep_s = float(os.environ.get("TASK_SLEEP_S", "0.05"))
    aq = AffinityQueue(QueueSettings())

    @aq.handler("work")
    async def work(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        run = _run_of(payload, ctx)
        _line(ledger, ev="start", **run)
        await asyncio.sleep(float(payload.get("sleep_s", default_sleep_s)))
        _line(ledger, ev="end", **run)
        return {"pid": PID, "worker": ctx.worker_id, "attempt": ctx.attempt}

    @aq.batch_handler("work-batch", max_size=int(os.environ.get("BATCH_MAX_SIZE", "5")))
    async def work_batch(
        payloads: list[dict[str, Any]], contexts: list[JobContext]
    ) -> list[dict[str, Any]]:
        runs = [_run_of(p, ctx) for p, ctx in zip(payloads, contexts, strict=True)]
        for run, payload in zip(runs, payloads, strict=True):  # the rows of a bulk call, in order
            _line(ledger, ev="start", **run)
            await asyncio.sleep(float(payload.get("sleep_s", default_sleep_s)))
            _line(ledger, ev="end", **run)
        return [{"pid": PID, "worker": c.worker_id, "attempt": c.attempt} for c in contexts]

    if every_s := os.environ.get("PERIODIC_EVERY_S"):
        aq.add_periodic(
            every_s=float(every_s),
            type="work",
            identify_tag="periodic",
            payload={"uid": "periodic", "seq": 0, "sleep_s": 0.01},
        )
        _die_after_adds(aq, int(os.environ.get("PERIODIC_DIE_AFTER_ADDS", "0")))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_leadership(aq, status))
    await aq.start()
    _line(status, ev="ready", node=aq.scheduler().node_id)
    await stop.wait()
    _line(status, ev="stopping")
    await aq.aclose()
    watcher.cancel()
    _line(status, ev="stopped", leading=aq.scheduler().is_leader)


if __name__ == "__main__":
    asyncio.run(main())
