"""The dashboard's access rules: refused without auth, denied by a denying dependency on every
route, cross-site and read-only POSTs refused with nothing changed, no Redis address shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import HTTPException
from fastapi.routing import APIRoute

from affinity_queue import AffinityQueue
from affinity_queue.dashboard.security import CSRF_COOKIE

ORIGIN = "http://dash.test"


@pytest.fixture
async def aq(make_settings) -> AsyncIterator[AffinityQueue]:
    queue = AffinityQueue(make_settings(app_role="SCHEDULER"))
    async with queue:
        yield queue


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)


def test_mounting_without_auth_is_refused(make_settings) -> None:
    aq = AffinityQueue(make_settings())
    with pytest.raises(ValueError, match="allow_unauthenticated=True"):
        aq.dashboard()


async def test_a_denying_dependency_guards_every_page_and_action(aq: AffinityQueue) -> None:
    def deny() -> None:
        raise HTTPException(401, "who are you?")

    app = aq.dashboard(auth=deny)
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    async with client(app) as c:
        for route in routes:
            path = route.path.format(queue="default", tid="61", job_id="1-00", name="style.css")
            for method in route.methods:
                response = await c.request(method, path)
                assert response.status_code == 401, (method, path)


async def _page(c: httpx.AsyncClient, path: str) -> httpx.Response:
    response = await c.get(path)
    assert response.status_code == 200, response.text
    return response


async def test_cross_site_posts_are_refused_and_change_nothing(aq: AffinityQueue) -> None:
    q = aq.queue()
    app = aq.dashboard(allow_unauthenticated=True)
    async with client(app) as c:
        await _page(c, "/q/default")
        token = c.cookies[CSRF_COOKIE]
        form = {"csrf": token, "next": "/q/default"}
        forged = [
            ({"sec-fetch-site": "cross-site"}, form),
            ({"origin": "http://evil.test"}, form),
            ({}, {"next": "/q/default"}),  # no token
            ({}, {**form, "csrf": "0" * 32}),  # a wrong one
        ]
        for headers, data in forged:
            r = await c.post("/q/default/pause", data=data, headers=headers)
            assert r.status_code == 403, (headers, data)
            assert not (await q.get_config())["paused"]
        # The same form from our own page works and says what it did.
        r = await c.post(
            "/q/default/pause",
            data=form,
            headers={"origin": ORIGIN, "sec-fetch-site": "same-origin"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/q/default"
        assert (await q.get_config())["paused"]
        assert "Queue default paused" in (await _page(c, "/q/default")).text
        # An off-site "next" is not followed.
        r = await c.post("/q/default/resume", data={**form, "next": "//evil.test/x"})
        assert r.headers["location"] == "/q/default"


async def test_read_only_hides_actions_and_refuses_them(aq: AffinityQueue) -> None:
    app = aq.dashboard(allow_unauthenticated=True, read_only=True)
    async with client(app) as c:
        page = await _page(c, "/q/default")
        assert 'method="post"' not in page.text
        r = await c.post("/q/default/pause", data={"csrf": c.cookies[CSRF_COOKIE]})
        assert r.status_code == 403
    assert not (await aq.queue().get_config())["paused"]


async def test_no_page_shows_the_redis_address(aq: AffinityQueue, redis_server) -> None:
    address = urlsplit(redis_server.url).netloc
    assert address
    app = aq.dashboard(allow_unauthenticated=True)
    async with client(app) as c:
        for path in [
            "/q/default",
            "/q/default/workers",
            "/q/default/tags?tag=a",
            "/q/default/failed",
        ]:
            assert address not in (await _page(c, path)).text
