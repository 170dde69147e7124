"""The dashboard's routes: pages that read through indexes with limits, and the actions.

Every page reads a bounded number of entries of the indexes the scripts maintain (ready sets,
per-tag lists, the retention sets, worker states); none scans the keyspace or the backlog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from fastapi import Depends, FastAPI, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import QueueUnavailableError, UnknownQueueError
from ..keys import tag_from_id, tag_id
from ..queue import JOB_ID, QueueService
from . import security

try:
    import jinja2
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the dashboard needs the 'dashboard' extra: pip install 'affinity-queue[dashboard]'"
    ) from e

if TYPE_CHECKING:
    from ..core import AffinityQueue

log = logging.getLogger("affinity_queue.dashboard")

PAGE = 50
"""Rows per page of every list."""
BULK_LIMIT = 1000
"""Dead letters one "requeue/delete all that match" click acts on: a click is one bounded
request; the page says how many are left."""
FLASH_COOKIE = "aq_flash"
STATIC = {"style.css": "text/css", "live.js": "text/javascript"}
LISTED_STATUSES = ("pending", "delayed", "assigned", "active", "completed", "cancelled", "failed")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("affinity_queue.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    return _duration((datetime.now(UTC) - value).total_seconds() * 1000) + " ago"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    s = max(ms, 0) / 1000
    if s < 1:
        return f"{ms:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


_env.filters["ago"] = _ago
_env.filters["duration"] = _duration
_env.filters["tid"] = tag_id


def dashboard(
    aq: AffinityQueue,
    *,
    auth: Callable[..., Any] | None = None,
    allow_unauthenticated: bool = False,
    read_only: bool = False,
    title: str = "affinity-queue",
) -> FastAPI:
    """The dashboard of ``aq``'s queues, to ``mount`` in the app whose lifespan starts ``aq``.

    ``auth`` is any FastAPI dependency; it runs before every page, asset and action, so raising
    ``HTTPException(401)`` (or 403) there denies them all. Without it the dashboard refuses to be
    built unless ``allow_unauthenticated=True`` says that is meant. ``read_only=True`` hides the
    actions and refuses their POSTs.
    """
    if auth is None and not allow_unauthenticated:
        raise ValueError(
            "dashboard(): pass auth=<a FastAPI dependency that checks the user>, or "
            "allow_unauthenticated=True to serve it to anyone who can reach it"
        )
    app = FastAPI(
        title=title,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(auth)] if auth else [],
    )
    ui = _Dashboard(aq, read_only=read_only, title=title)
    ui.install(app)
    return app


class _Dashboard:
    def __init__(self, aq: AffinityQueue, *, read_only: bool, title: str) -> None:
        self.aq = aq
        self.read_only = read_only
        self.title = title

    # -- plumbing ---------------------------------------------------------------------------
    def install(self, app: FastAPI) -> None:
        get, post = app.get, app.post
        get("/")(self.home)
        get("/static/{name}")(self.static)
        get("/jobs/{job_id}")(self.job)
        get("/q/{queue}")(self.overview)
        get("/q/{queue}/workers")(self.workers)
        get("/q/{queue}/tags")(self.tags)
        get("/q/{queue}/tags/{tid}")(self.tag)
        get("/q/{queue}/jobs")(self.jobs)
        get("/q/{queue}/failed")(self.failed)
        post("/q/{queue}/pause")(self.act(self._pause))
        post("/q/{queue}/resume")(self.act(self._resume))
        post("/q/{queue}/tags/{tid}/pause")(self.act(self._pause_tag))
        post("/q/{queue}/tags/{tid}/resume")(self.act(self._resume_tag))
        post("/q/{queue}/jobs/{job_id}/cancel")(self.act(self._cancel))
        post("/q/{queue}/failed/requeue")(self.act(self._requeue))
        post("/q/{queue}/failed/delete")(self.act(self._delete))
        app.exception_handler(QueueUnavailableError)(self._unavailable)

    def _queue(self, name: str) -> QueueService:
        try:
            return self.aq.queue(name)
        except UnknownQueueError:
            raise HTTPException(404, f"no queue named {name!r}") from None

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        token = security.csrf_token(request)
        flash = unquote(request.cookies.get(FLASH_COOKIE, "")) or None
        html = _env.get_template(template).render(
            base=base,
            title=self.title,
            queues=self.aq.names,
            read_only=self.read_only,
            csrf=token,
            flash=flash,
            # Relative to the mount point, as the actions' "next" field expects.
            request_path=request.url.path.removeprefix(base),
            query=request.url.query,
            **context,
        )
        response = HTMLResponse(html, status_code)
        security.remember(response, token, base)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=base or "/")
        return response

    async def _unavailable(self, request: Request, exc: Exception) -> Response:
        # The cause names Redis's address: it goes to the log only.
        queue = getattr(exc, "queue", None)
        log.warning("dashboard %s: %s", request.url.path, exc, extra={"queue": queue})
        return self.render(
            request, "error.html", 503, message="Redis is unavailable; try again shortly."
        )

    def act(
        self, action: Callable[[QueueService, dict[str, list[str]], dict[str, str]], Awaitable[str]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST route around ``action``: refuses cross-site and read-only requests, runs it,
        and redirects back with what it did."""

        async def route(request: Request) -> Response:
            if self.read_only:
                raise HTTPException(403, "this dashboard is read-only")
            body = (await request.body()).decode(errors="replace")
            form = parse_qs(body, keep_blank_values=True)
            reason = security.cross_site_reason(request, form.get(security.CSRF_FIELD, [""])[0])
            if reason:
                raise HTTPException(403, f"refused: {reason}")
            queue = self._queue(request.path_params["queue"])
            message = await action(queue, form, dict(request.path_params))
            base = request.scope.get("root_path", "")
            back = form.get("next", [""])[0]
            # Only back to one of our own pages: never an open redirect.
            if not back.startswith("/") or back.startswith("//"):
                back = f"/q/{queue.name}"
            response = RedirectResponse(base + back, status_code=303)
            response.set_cookie(
                FLASH_COOKIE, quote(message), path=base or "/", httponly=True, samesite="strict"
            )
            return response

        return route

    async def static(self, name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404)
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    # -- pages ------------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse(
            f"{request.scope.get('root_path', '')}/q/{self.aq.names[0]}", status_code=307
        )

    async def overview(self, request: Request, queue: str) -> Response:
        q = self._queue(queue)
        stats = await q.get_queue_stats()
        config = await q.get_config()
        activity = await q.activity()
        peak = max([1, *(b.finished + b.failed for b in activity)])
        waits = [b.wait_ms for b in activity if b.wait_ms is not None]
        return self.render(
            request,
            "overview.html",
            queue=queue,
            stats=stats,
            config=config,
            activity=activity,
            peak=peak,
            peak_wait=max([1.0, *waits]),
            oldest=(await q.get_tags(await q.waiting_tags(1))),
        )

    async def workers(self, request: Request, queue: str) -> Response:
        q = self._queue(queue)
        stats = await q.get_queue_stats()
        config = await q.get_config()
        active = {j.id: j for j in await q.get_jobs([w.active_job_id or "" for w in stats.workers])}
        now_ms = time.time() * 1000
        # A lease is renewed to HEARTBEAT_TIMEOUT ahead: its age is how long ago that was.
        renewed_ms = {
            w: expiry - q.settings.heartbeat_timeout_ms
            for w, expiry in config["lease_expiry_ms"].items()
        }
        rows = [
            {
                "w": w,
                "job": active.get(w.active_job_id or ""),
                "lease_age_ms": now_ms - renewed_ms.get(w.worker_id, now_ms),
            }
            for w in stats.workers
        ]
        return self.render(request, "workers.html", queue=queue, rows=rows, config=config)

    async def tags(
        self, request: Request, queue: str, tag: str = "", match: str = "exact"
    ) -> Response:
        q = self._queue(queue)
        complete = True
        if tag and match == "prefix":
            names, complete = await q.search_tags(tag, limit=PAGE)
        elif tag:
            names = [tag]
        else:
            names = []
        busiest = [t for t, _ in await q.busiest_tags(20)]
        return self.render(
            request,
            "tags.html",
            queue=queue,
            tag=tag,
            match=match,
            found=await q.get_tags(names),
            complete=complete,
            waiting=await q.get_tags(await q.waiting_tags(20)),
            busiest=await q.get_tags(busiest),
            with_work=await q.count_tags(),
        )

    async def tag(self, request: Request, queue: str, tid: str, offset: int = 0) -> Response:
        q = self._queue(queue)
        try:
            name = tag_from_id(tid)
        except ValueError:
            raise HTTPException(404, "not a tag") from None
        (info,) = await q.get_tags([name])
        pending = await q.list_tag_jobs(name, max(offset, 0), PAGE)
        stats = await q.get_queue_stats()
        holders = [w for w in stats.workers if w.current_identify_tag == name]
        running = await q.get_jobs([w.active_job_id or "" for w in holders])
        return self.render(
            request,
            "tag.html",
            queue=queue,
            info=info,
            pending=pending,
            offset=max(offset, 0),
            page=PAGE,
            holders=holders,
            running=running,
            assigned=await q.list_tag_assigned(name, PAGE),
            finished=await q.list_tag_finished(name),
        )

    async def jobs(
        self, request: Request, queue: str, status: str = "", tag: str = "", offset: int = 0
    ) -> Response:
        q = self._queue(queue)
        offset = max(offset, 0)
        note = ""
        if status in ("", "pending") and tag:
            jobs = await q.list_tag_jobs(tag, offset, PAGE)
        elif status == "pending":
            jobs, note = [], "Pending jobs are listed per tag: give a tag."
        elif status == "delayed":
            jobs = await q.list_delayed(offset, PAGE)
        elif status in ("completed", "cancelled"):
            jobs = [j for j in await q.list_finished(offset, PAGE) if j.status == status]
            note = "Completed and cancelled jobs share one index: a page may show fewer rows."
        elif status == "failed":
            jobs = await q.list_failed(offset, PAGE)
        elif status in ("assigned", "active"):
            stats = await q.get_queue_stats()
            jobs = [
                j
                for j in await q.get_jobs([w.active_job_id or "" for w in stats.workers])
                if status == "active"
            ]
            note = (
                "Assigned jobs are listed on each worker's tag page."
                if status == "assigned"
                else ""
            )
        else:
            jobs, note = [], "Choose a status (and, for pending jobs, a tag)."
        if tag and status not in ("", "pending"):
            jobs = [j for j in jobs if j.identify_tag == tag]
        return self.render(
            request,
            "jobs.html",
            queue=queue,
            jobs=jobs,
            status=status,
            tag=tag,
            offset=offset,
            page=PAGE,
            statuses=LISTED_STATUSES,
            note=note,
        )

    async def job(self, request: Request, job_id: str) -> Response:
        if not JOB_ID.match(job_id):
            return self.render(request, "error.html", 404, message=f"{job_id!r} is not a job id")
        for name in self.aq.names:
            found = await self.aq.queue(name).get_job(job_id)
            if found is not None:
                return self.render(request, "job.html", queue=name, job=found)
        return self.render(request, "error.html", 404, message=f"no job {job_id} in any queue")

    async def failed(
        self,
        request: Request,
        queue: str,
        type: str = "",
        tag: str = "",
        error: str = "",
        cursor: int = 0,
    ) -> Response:
        q = self._queue(queue)
        page = await q.find_failed(
            type=type or None,
            identify_tag=tag or None,
            error_type=error or None,
            cursor=cursor,
            limit=PAGE,
        )
        filters = {"type": type, "tag": tag, "error": error}
        return self.render(
            request,
            "failed.html",
            queue=queue,
            page=page,
            cursor=max(cursor, 0),
            filters=filters,
            next_query=urlencode({**filters, "cursor": page.next_cursor or 0}),
        )

    # -- actions ----------------------------------------------------------------------------
    @staticmethod
    async def _pause(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        await q.pause()
        return f"Queue {q.name} paused: nothing new is placed until it is resumed."

    @staticmethod
    async def _resume(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        await q.resume()
        return f"Queue {q.name} resumed."

    @staticmethod
    async def _pause_tag(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        tag = _tag(path["tid"])
        await q.pause_tag(tag)
        return f"Tag {tag} paused."

    @staticmethod
    async def _resume_tag(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        tag = _tag(path["tid"])
        await q.resume_tag(tag)
        return f"Tag {tag} resumed."

    @staticmethod
    async def _cancel(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        outcome = await q.cancel(path["job_id"])
        return f"Cancel {path['job_id']}: {outcome.value}."

    @staticmethod
    async def _requeue(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        ids, left = await _selected(q, form)
        done = sum([await q.requeue_failed(i) for i in ids])
        return f"Requeued {done} dead letter(s){left}."

    @staticmethod
    async def _delete(q: QueueService, form: dict[str, list[str]], path: dict[str, str]) -> str:
        ids, left = await _selected(q, form)
        done = sum([await q.delete_failed(i) for i in ids])
        return f"Deleted {done} dead letter(s){left}."


def _tag(tid: str) -> str:
    try:
        return tag_from_id(tid)
    except ValueError:
        raise HTTPException(404, "not a tag") from None


async def _selected(q: QueueService, form: dict[str, list[str]]) -> tuple[list[str], str]:
    """The ids a bulk action names: those ticked, or (``all=1``) up to ``BULK_LIMIT`` of those
    that match the filter, with a note when more remain."""
    if form.get("all", [""])[0] != "1":
        return [i for i in form.get("ids", []) if JOB_ID.match(i)], ""
    one = {k: (form.get(k, [""])[0] or None) for k in ("type", "tag", "error")}
    ids, more = await q.match_failed(
        type=one["type"], identify_tag=one["tag"], error_type=one["error"], limit=BULK_LIMIT
    )
    return ids, "; more match: press again" if more else ""
