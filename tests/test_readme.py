"""Every Python block of the README runs here, unless it starts with ``# fragment``."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from affinity_queue import JobStatus

from .support import wait_for

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_every_block_runs_here_or_says_it_is_a_fragment() -> None:
    blocks = python_blocks()
    assert blocks, "the README has no Python"
    whole = [b for b in blocks if not b.startswith("# fragment")]
    assert len(whole) == 1, "a new whole example: run it in a test here"


async def test_the_first_screen_example_processes_a_task(
    redis_server, queue_name, monkeypatch, capsys
) -> None:
    (example,) = [b for b in python_blocks() if not b.startswith("# fragment")]
    for name, value in {
        "REDIS_URL": redis_server.url,
        "PENDING_QUEUE_NAME": queue_name,
        "WORKER_QUEUE_PREFIX": f"{queue_name}-wq",
        "WORKER_STATE_PREFIX": f"{queue_name}-ws",
        "APP_ROLE": "BOTH",
        "SCHEDULER_INTERVAL": "100",
    }.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(example, str(README), "exec"), namespace)
    app, aq = namespace["app"], namespace["aq"]
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/tasks",
                json={"type": "send-email", "identifyTag": "company-1", "payload": {"to": "a@b"}},
            )
            assert response.status_code == 200, response.text
            job_id = response.json()["jobId"]

            await wait_for(
                lambda: aq.queue().get_job(job_id),  # type: ignore[attr-defined]
                lambda job: job is not None and job.status is JobStatus.COMPLETED,
                what="the README example's task to complete",
            )
    assert "[company-1] mail to a@b (attempt 1)" in capsys.readouterr().out
