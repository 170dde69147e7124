"""Failures are logged: every failed attempt at WARNING (queue, job, type, tag, attempt n/max,
error), a final failure at ERROR with its traceback once, an unknown task type at ERROR."""

from __future__ import annotations

import logging

from affinity_queue import AffinityQueue, JobStatus

from .lifecycle.support import all_settled, task


def _about(caplog, job_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("affinity_queue") and f"job {job_id} " in r.getMessage()
    ]


async def test_failed_attempts_and_final_failures_are_logged(make_settings, caplog) -> None:
    aq = AffinityQueue(make_settings(worker_count=1, max_attempts=3, retry_backoff_ms=10))

    @aq.handler("boom")
    def boom(payload: None) -> None:
        raise ValueError("it broke")

    q = aq.queue()
    failing = await q.add(task("T", None, "boom"))
    unknown = await q.add(task("U", None, "nobody-handles-this"))
    async with aq:
        jobs = await all_settled(q, [failing.id, unknown.id], timeout_s=10)
    assert [j.status for j in jobs] == [JobStatus.FAILED, JobStatus.FAILED]

    records = _about(caplog, failing.id)
    retries = [r for r in records if r.levelno == logging.WARNING]
    finals = [r for r in records if r.levelno == logging.ERROR]
    assert [
        ("attempt 1/3" in r.getMessage(), "attempt 2/3" in r.getMessage()) for r in retries
    ] == [
        (True, False),
        (False, True),
    ], [r.getMessage() for r in records]
    for r in retries:
        msg = r.getMessage()
        assert "queue default" in msg and "'boom'" in msg and "'T'" in msg, msg
        assert "ValueError: it broke" in msg, msg
        assert r.exc_info is None, "a retry must not repeat the traceback"
    assert len(finals) == 1, [r.getMessage() for r in finals]
    assert (
        "attempt 3/3" in finals[0].getMessage() and "ValueError: it broke" in finals[0].getMessage()
    )
    assert finals[0].exc_info is not None, "the final failure carries the traceback"

    (missing,) = _about(caplog, unknown.id)
    assert missing.levelno == logging.ERROR
    assert (
        "UnknownTaskType" in missing.getMessage()
        and "'nobody-handles-this'" in missing.getMessage()
    )
