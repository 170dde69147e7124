"""The dashboard in a real browser (Debian's chromium, driven by Playwright) on a queue with real
work and faults: what a person reads, and what a click does, checked through the Python API."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from affinity_queue import AffinityQueue, JobFailedError
from affinity_queue.keys import tag_id

from .redis_server import free_port
from .support import wait_for

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS_ENV = "DASHBOARD_SCREENSHOTS"
"""Where the screenshots go (``docs/screenshots`` refreshes the README's); a temporary folder
otherwise."""

pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is missing (scripts/test installs chromium)"
)


@pytest.fixture
async def served(make_settings) -> AsyncIterator[tuple[str, AffinityQueue, dict[str, Any]]]:
    aq = AffinityQueue(make_settings(worker_count=3, max_batch_size=10))
    hold = asyncio.Event()
    failed_once: set[str] = set()

    @aq.handler("hold")
    async def held(payload: Any) -> str:
        await hold.wait()
        return "released"

    @aq.handler("boom")
    async def boom(payload: Any, ctx: Any) -> str:
        if ctx.job_id not in failed_once:
            failed_once.add(ctx.job_id)
            raise ValueError(f"invoice {payload['invoice']} has no customer")
        return "fixed"

    app = FastAPI(lifespan=aq.lifespan)
    app.mount("/dashboard", aq.dashboard(allow_unauthenticated=True))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: asyncio.sleep(0, server.started), bool, what="the server to start")
    try:
        yield f"http://127.0.0.1:{port}/dashboard", aq, {"hold": hold}
    finally:
        hold.set()
        server.should_exit = True
        await task


async def test_pages_show_work_and_faults_and_actions_act(served, tmp_path) -> None:
    url, aq, control = served
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    q = aq.queue()
    # A worker holding tenant-x with three taken (one running, two queued behind it).
    held = [await q.add({"type": "hold", "identifyTag": "tenant-x"}) for _ in range(3)]
    dead = await q.add({"type": "boom", "identifyTag": "tenant-f", "payload": {"invoice": 42}})
    with pytest.raises(JobFailedError):
        await q.wait_for(dead.id, timeout_s=10)

    async def holding() -> bool:
        stats = await q.get_queue_stats()
        return any(w.current_identify_tag == "tenant-x" for w in stats.workers)

    await wait_for(holding, bool, what="a worker to take tenant-x")
    await q.add({"type": "hold", "identifyTag": "tenant-p"})
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)

    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            await page.goto(f"{url}/")
            await page.get_by_role("heading", name="Queue default").wait_for()
            card = page.locator(".card", has_text="dead letters").locator(".n")
            assert await card.inner_text() == "1"
            await page.screenshot(path=shots / "overview.png", full_page=True)

            await page.get_by_role("link", name="Workers", exact=True).click()
            row = page.locator("tr.worker", has_text="tenant-x")
            await row.wait_for()
            assert "3/10" in await row.locator("td.batch").inner_text()
            assert held[0].id in await row.inner_text()
            await page.screenshot(path=shots / "workers.png", full_page=True)

            await page.get_by_role("link", name="Tags", exact=True).click()
            await page.get_by_placeholder("tag").fill("tenant-")
            await page.get_by_label("match").select_option("prefix")
            await page.get_by_role("button", name="Search").click()
            await page.get_by_role("link", name="tenant-p").first.wait_for()
            await page.screenshot(path=shots / "tags.png", full_page=True)
            busiest = page.locator("h2:has-text('Busiest') + table")
            assert "tenant-x" in await busiest.inner_text()  # two queued behind the running one

            await page.goto(f"{url}/q/default/tags/{tag_id('tenant-x')}")
            assigned = await page.locator("h2:has-text('Assigned') + table").inner_text()
            assert held[1].id in assigned and held[2].id in assigned
            await page.screenshot(path=shots / "tag.png", full_page=True)
            await page.goto(f"{url}/q/default/tags/{tag_id('tenant-f')}")
            finished = await page.locator("h2:has-text('Recently finished') + table").inner_text()
            assert dead.id in finished and "failed" in finished

            await page.goto(f"{url}/q/default/failed?error=KeyError")
            await page.get_by_text("no dead letters match").wait_for()
            await page.goto(f"{url}/q/default/failed?error=ValueError")
            letter = page.locator("tr.dead", has_text=dead.id)
            await letter.locator("summary").click()
            text = await letter.inner_text()
            assert "ValueError: invoice 42 has no customer" in text
            assert "Traceback (most recent call last)" in text
            await page.screenshot(path=shots / "dead-letters.png", full_page=True)

            await page.goto(f"{url}/jobs/{dead.id}")
            await page.get_by_text("attempt 1: ValueError").wait_for()
            await page.screenshot(path=shots / "job.png", full_page=True)

            await page.goto(f"{url}/q/default/failed")
            await letter.get_by_role("button", name="Requeue").click()
            await page.get_by_role("status").filter(has_text="Requeued 1 dead letter").wait_for()
            assert await q.wait_for(dead.id, timeout_s=10) == "fixed"

            await page.goto(f"{url}/q/default/tags/{tag_id('tenant-p')}")
            await page.get_by_role("button", name="Pause tag").click()
            await page.get_by_role("status").filter(has_text="Tag tenant-p paused").wait_for()
            (info,) = await q.get_tags(["tenant-p"])
            assert info.paused
            assert await page.get_by_role("button", name="Resume tag").is_visible()
        finally:
            await browser.close()
    control["hold"].set()
    for job in held:
        assert await q.wait_for(job.id, timeout_s=10) == "released"
