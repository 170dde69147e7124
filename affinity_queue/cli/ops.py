"""Operator commands: inspect a queue and act on it from ``REDIS_URL`` and a queue name alone.

Each reads through the same index-based ``QueueService`` methods as the dashboard. Output is a
table for people, or JSON (``--json``) for scripts. Exit codes: 0 ok, 1 failure (Redis
unreachable, a job not found, an action that did nothing), 2 usage (bad arguments, an unknown
queue, a refused confirmation: nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..core import AffinityQueue
from ..errors import QueueUnavailableError
from ..models import Job
from ..queue import JOB_ID, QueueService
from ..settings import QueueSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or a queue that does not exist: a one-line message, exit 2."""


ID = "12-3f2a9c0d1e2b4c5d"
# name: (help, example, destructive)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "workers": ("list live workers: tag, batch, queue length, running job", "workers", False),
    "tags": ("the longest-waiting or busiest tags, or one tag (--tag)",
             "tags --top 20 --by backlog", False),
    "jobs": ("list jobs by status (pending ones need --tag)", "jobs --tag t1 --status pending",
             False),
    "job": ("show one job (searched in every queue)", f"job {ID}", False),
    "failed": ("list dead letters, newest first", "failed --type send-email --error ValueError",
               False),
    "requeue": ("requeue dead letters by id, or --all that match",
                "requeue --all --type send-email --yes", True),
    "delete-failed": ("delete dead letters by id, or --all that match",
                      f"delete-failed {ID} --yes", True),
    "cancel": ("cancel a job that has not finished", f"cancel {ID} --yes", True),
    "pause": ("pause the queue, or one tag", "pause --tag tenant-a", False),
    "resume": ("resume the queue, or one tag", "resume --tag tenant-a", False),
    "leader": ("show the elected scheduler", "leader --json", False),
}  # fmt: skip

EPILOG = """\
The queue: --queue NAME is its PENDING_QUEUE_NAME (default: the PENDING_QUEUE_NAME variable, or
pending-tasks), read from REDIS_URL; or --app MODULE:ATTRIBUTE takes the queues, and their
settings, from your AffinityQueue. Exit codes: 0 ok, 1 failure, 2 usage (nothing changed).

example:
  REDIS_URL=redis://localhost:6379/0 affinity-queue {example}
"""


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", metavar="NAME", help="the queue's PENDING_QUEUE_NAME")
    parser.add_argument("--app", metavar="MODULE:ATTRIBUTE", help="take queues from this app")
    parser.add_argument("--app-dir", default=".", metavar="DIR", help="put DIR first on sys.path")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_commands(commands: Any) -> None:
    for name, (help_, example, destructive) in COMMANDS.items():
        p = commands.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog=EPILOG.format(example=example),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(p)
        if destructive:
            p.add_argument("--yes", action="store_true", help="do it without asking")
        if name in ("job", "cancel"):
            p.add_argument("id", metavar="ID")
        if name in ("requeue", "delete-failed"):
            p.add_argument("ids", metavar="ID", nargs="*")
            p.add_argument("--all", action="store_true", help="every dead letter that matches")
        if name in ("failed", "requeue", "delete-failed"):
            p.add_argument("--type", help="only this task type")
            p.add_argument("--tag", help="only this tag")
            p.add_argument("--error", metavar="TYPE", help="only this error type (ValueError)")
        if name in ("tags", "jobs", "pause", "resume"):
            p.add_argument("--tag", help="one tag")
        if name == "tags":
            p.add_argument("--top", type=int, default=20, metavar="N")
            p.add_argument(
                "--by",
                choices=("wait", "backlog"),
                default="wait",
                help="wait: longest-waiting placeable tags; backlog: most jobs waiting to start",
            )
        if name == "jobs":
            p.add_argument("--status", required=True, choices=list(_LISTERS))
        if name in ("jobs", "failed"):
            p.add_argument("--limit", type=int, default=50, metavar="N")
            p.add_argument("--offset", type=int, default=0, metavar="N")


def open_app(
    args: argparse.Namespace, load: Callable[[str, str], AffinityQueue]
) -> tuple[AffinityQueue, list[str]]:
    """The AffinityQueue to read and the names of the queues the command acts on."""
    if args.app:
        aq = load(args.app, args.app_dir)
        if args.queue and args.queue not in aq.names:
            raise UsageError(f"no queue {args.queue!r} in {args.app}; it has {aq.names}")
        return aq, [args.queue] if args.queue else aq.names
    if not os.environ.get("REDIS_URL"):
        raise UsageError("set REDIS_URL (for example redis://localhost:6379/0), or pass --app")
    extra = {"pending_queue_name": args.queue} if args.queue else {}
    return AffinityQueue(QueueSettings(**extra)), ["default"]


async def run(args: argparse.Namespace, aq: AffinityQueue, names: list[str]) -> int:
    try:
        queues = [aq.queue(n) for n in names]
        if not args.app:
            (q,) = queues
            if not await q.exists():
                raise UsageError(
                    f"no queue {q.settings.pending_queue_name!r} at REDIS_URL "
                    "(it never ran there; check --queue / PENDING_QUEUE_NAME)"
                )
        return await _COMMANDS[args.command](args, queues)
    except UsageError as e:
        _error(str(e))
        return EXIT_USAGE
    except QueueUnavailableError as e:
        _error(str(e))
        return EXIT_FAILED
    finally:
        await aq.aclose()


def _error(message: str) -> None:
    print(f"affinity-queue: error: {message}", file=sys.stderr)


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(rows, default=str, ensure_ascii=False))
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):  # a progress value: JSON, as --json prints it
        return json.dumps(value, ensure_ascii=False)
    return "-" if value is None or value == "" else str(value)


def _confirm(args: argparse.Namespace, what: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without confirmation: pass --yes")
    if input(f"{what}? [y/N] ").strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed; nothing changed")


def _job_id(value: str) -> str:
    if not JOB_ID.match(value):
        raise UsageError(f"{value!r} is not a job id (they look like 12-3f2a9c0d1e2b4c5d)")
    return value


def _job_row(j: Job) -> dict[str, Any]:
    row = j.model_dump(mode="json", by_alias=False)
    row["error"] = f"{j.error.type}: {j.error.message}" if j.error else None
    return row


WORKER_COLUMNS = ("queue", "worker_id", "status", "current_identify_tag", "batch", "queue_length",
                  "active_job_id", "active_job_progress", "host", "pid")  # fmt: skip
JOB_COLUMNS = ("id", "type", "identify_tag", "status", "attempts", "created_at", "worker_id")


# -- the commands -------------------------------------------------------------------------------
async def _stats(args: argparse.Namespace, queues: list[QueueService]) -> int:
    stats = [await q.get_queue_stats() for q in queues]
    if args.json:
        for s in stats:
            print(s.model_dump_json())
        return EXIT_OK
    rows = [{**s.model_dump(by_alias=False), "workers": len(s.workers)} for s in stats]
    _emit(args, rows, ("queue", "pending", "delayed", "assigned", "active", "completed",
                       "failed", "cancelled", "workers"))  # fmt: skip
    return EXIT_OK


async def _workers(args: argparse.Namespace, queues: list[QueueService]) -> int:
    rows = []
    for q in queues:
        stats, config = await q.get_queue_stats(), await q.get_config()
        for w in stats.workers:
            row = w.model_dump(mode="json", by_alias=False)
            row.update(queue=q.name, batch=f"{w.current_batch_size}/{config['max_batch_size']}")
            rows.append(row)
    _emit(args, rows, WORKER_COLUMNS)
    return EXIT_OK


async def _tags(args: argparse.Namespace, queues: list[QueueService]) -> int:
    rows = []
    for q in queues:
        if args.tag:
            names = [args.tag]
        elif args.by == "backlog":
            names = [t for t, _ in await q.busiest_tags(max(1, args.top))]
        else:
            names = await q.waiting_tags(max(1, args.top))
        for t in await q.get_tags(names):
            row = t.model_dump(by_alias=False)
            row.update(queue=q.name, bound_workers=len(t.bound_workers))
            rows.append(row)
    _emit(args, rows, ("queue", "identify_tag", "backlog", "pending", "oldest_created_at",
                       "bound_workers", "limit", "paused", "ready"))  # fmt: skip
    return EXIT_OK


async def _pending(q: QueueService, args: argparse.Namespace) -> list[Any]:
    if not args.tag:
        raise UsageError("pending jobs are listed per tag: pass --tag")
    return await q.list_tag_jobs(args.tag, args.offset, args.limit)


async def _finished(q: QueueService, args: argparse.Namespace) -> list[Any]:
    return [j for j in await q.list_finished(args.offset, args.limit) if j.status == args.status]


async def _active(q: QueueService, args: argparse.Namespace) -> list[Any]:
    stats = await q.get_queue_stats()
    return await q.get_jobs([w.active_job_id or "" for w in stats.workers])


_LISTERS: dict[str, Callable[[QueueService, argparse.Namespace], Awaitable[list[Any]]]] = {
    "pending": _pending,
    "delayed": lambda q, a: q.list_delayed(a.offset, a.limit),
    "active": _active,
    "completed": _finished,
    "cancelled": _finished,
    "failed": lambda q, a: q.list_failed(a.offset, a.limit),
}


async def _jobs(args: argparse.Namespace, queues: list[QueueService]) -> int:
    rows = []
    for q in queues:
        jobs = await _LISTERS[args.status](q, args)
        rows += [_job_row(j) for j in jobs if not args.tag or j.identify_tag == args.tag]
    _emit(args, rows, JOB_COLUMNS)
    return EXIT_OK


async def _job(args: argparse.Namespace, queues: list[QueueService]) -> int:
    job_id = _job_id(args.id)
    for q in queues:
        job = await q.get_job(job_id)
        if job is not None:
            if args.json:
                print(job.model_dump_json())
            else:
                for key, value in {"queue": q.name, **_job_row(job)}.items():
                    if key != "history":
                        print(f"{key:>14}: {_cell(value)}")
                for e in job.history:
                    print(f"\nattempt {e.attempt}: {e.type}: {e.message}\n{e.traceback}")
            return EXIT_OK
    _error(f"no job {job_id} in {[q.name for q in queues]}")
    return EXIT_FAILED


async def _failed(args: argparse.Namespace, queues: list[QueueService]) -> int:
    rows = []
    for q in queues:
        page = await q.find_failed(
            type=args.type, identify_tag=args.tag, error_type=args.error, cursor=args.offset,
            limit=args.limit,
        )  # fmt: skip
        rows += [_job_row(j) for j in page.jobs]
    _emit(args, rows, ("id", "type", "identify_tag", "error", "attempts", "finished_at"))
    return EXIT_OK


async def _bulk(args: argparse.Namespace, queues: list[QueueService], verb: str) -> int:
    if bool(args.ids) == bool(args.all):
        raise UsageError(f"give the ids to {verb}, or --all (with filters), not both")
    ids = [_job_id(i) for i in args.ids]
    done = 0
    for q in queues:
        if args.all:
            ids, _ = await q.match_failed(
                type=args.type, identify_tag=args.tag, error_type=args.error, limit=sys.maxsize
            )
        if ids:
            _confirm(args, f"{verb} {len(ids)} dead letter(s) of queue {q.name}")
        act = q.requeue_failed if verb == "requeue" else q.delete_failed
        done += sum([await act(i) for i in ids])
    print(json.dumps({verb + "d": done}) if args.json else f"{verb}d {done} dead letter(s)")
    return EXIT_OK if done or args.all else EXIT_FAILED


async def _requeue(args: argparse.Namespace, queues: list[QueueService]) -> int:
    return await _bulk(args, queues, "requeue")


async def _delete(args: argparse.Namespace, queues: list[QueueService]) -> int:
    return await _bulk(args, queues, "delete")


async def _cancel(args: argparse.Namespace, queues: list[QueueService]) -> int:
    job_id = _job_id(args.id)
    for q in queues:
        if await q.get_job(job_id) is not None:
            _confirm(args, f"cancel job {job_id} of queue {q.name}")
            outcome = await q.cancel(job_id)
            print(json.dumps({"outcome": outcome.value}) if args.json else outcome.value)
            return EXIT_OK
    _error(f"no job {job_id}")
    return EXIT_FAILED


async def _pause(args: argparse.Namespace, queues: list[QueueService]) -> int:
    on = args.command == "pause"
    for q in queues:
        if args.tag:
            await (q.pause_tag if on else q.resume_tag)(args.tag)
        else:
            await (q.pause if on else q.resume)()
    what = f"tag {args.tag}" if args.tag else "queue"
    print(json.dumps({"paused": on}) if args.json else f"{what} {'paused' if on else 'resumed'}")
    return EXIT_OK


async def _leader(args: argparse.Namespace, queues: list[QueueService]) -> int:
    rows = []
    for q in queues:
        leader = (await q.get_queue_stats()).leader
        rows.append({"queue": q.name, **(leader.model_dump(by_alias=False) if leader else {})})
    _emit(args, rows, ("queue", "node_id", "host", "pid", "fence", "since", "last_heartbeat"))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, list[QueueService]], Awaitable[int]]] = {
    "stats": _stats,
    "workers": _workers,
    "tags": _tags,
    "jobs": _jobs,
    "job": _job,
    "failed": _failed,
    "requeue": _requeue,
    "delete-failed": _delete,
    "cancel": _cancel,
    "pause": _pause,
    "resume": _pause,
    "leader": _leader,
}
