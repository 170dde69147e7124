"""The ``affinity-queue`` console command: run a queue's roles in a process without HTTP
(``worker``, here), and inspect and act on queues (``stats`` and the operator commands, in
:mod:`.ops`).

The only place that installs signal handlers (inside uvicorn, uvicorn owns them).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from pydantic import ValidationError

from .. import __version__
from ..core import AffinityQueue, _redacted
from ..errors import QueueUnavailableError
from ..observability import logs
from ..settings import QueueSettings, Role
from . import ops
from .ops import UsageError

EXIT_USAGE = 2
EXIT_FORCED = 1
EXIT_ERROR = 1


TARGET_HELP = (
    "where the AffinityQueue is, as MODULE:ATTRIBUTE (for example example_app.main:aq); "
    "importing the module registers its handlers"
)

DESCRIPTION = "Run and inspect affinity-queue queues without an HTTP server."

WORKER_DESCRIPTION = """\
Import TARGET and run, for each queue it declares, what that queue's APP_ROLE asks for:
SCHEDULER (take part in the election; the leader assigns tasks), WORKER (run tasks) or BOTH.
Settings come from the environment and .env, as for the API (REDIS_URL, APP_ROLE,
WORKER_COUNT, ...).

SIGTERM or Ctrl-C stops gracefully: no new tasks are taken, running ones get
SHUTDOWN_GRACE_PERIOD to finish (then they are cancelled and go back to their tag's queue),
queued ones go back to the front of their tag, the workers deregister and a leader resigns so a
standby takes over at once. A second signal exits at once; the leader then recovers this
process's tasks when its leases expire (HEARTBEAT_TIMEOUT). Exits 0 after a graceful stop.
"""

WORKER_EPILOG = """\
examples:
  APP_ROLE=WORKER REDIS_URL=redis://redis:6379/0 affinity-queue worker example_app.main:aq
  APP_ROLE=SCHEDULER affinity-queue worker --log-level warning myapp.tasks:aq
"""

STATS_DESCRIPTION = """\
Print each queue's counts by status and its number of live workers; with --json, one object
per queue and line: counts, every live worker's state and the current leader. The queues are
TARGET's (or --app's), else --queue's at REDIS_URL. Exits 1 when Redis cannot be reached.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affinity-queue", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    common.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory put first on sys.path before TARGET is imported (default: the current "
        "directory)",
    )
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the affinity_queue loggers and the root logger (default: info)",
    )

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run the scheduler and/or workers that APP_ROLE asks for, until SIGTERM",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument(
        "--log-format",
        default=os.environ.get("LOG_FORMAT", "text").lower(),
        choices=["text", "json"],
        help="text lines, or one JSON object per line with the job's fields (default: "
        "LOG_FORMAT, else text)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (the 'metrics' extra)",
    )
    stats = commands.add_parser(
        "stats",
        help="print each queue's counts (a table, or JSON)",
        description=STATS_DESCRIPTION,
        epilog=ops.EPILOG.format(example="stats --queue pending-tasks --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("target", metavar="TARGET", nargs="?", help=TARGET_HELP)
    ops.add_common(stats)
    ops.add_commands(commands)
    return parser


def load_target(target: str, app_dir: str) -> AffinityQueue:
    """Import ``MODULE:ATTRIBUTE`` and return the :class:`AffinityQueue` it names.

    Raises :class:`UsageError` when TARGET is misspelt or its module does not exist; any error
    raised by the module's own code (a missing dependency included) propagates as it is.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"TARGET must look like MODULE:ATTRIBUTE, got {target!r}")
    sys.path.insert(0, os.path.abspath(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only TARGET's module (or a package on its path) missing is a usage error.
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            raise UsageError(
                f"cannot import {module_name!r} ({e}); run from the directory that contains it "
                "or pass --app-dir"
            ) from e
        raise
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, AffinityQueue):
        raise UsageError(f"{target} is a {type(obj).__name__}, not an AffinityQueue")
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        return _operate(args)
    logs.configure(args.log_format, args.log_level)
    try:
        aq = load_target(args.target, args.app_dir)
    except UsageError as e:
        print(f"affinity-queue: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as e:
        if e.title != QueueSettings.__name__:
            raise
        # A bad setting: the message names the variable (never its value); no traceback needed.
        print(f"affinity-queue: error: importing {args.target}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        print(f"affinity-queue: error: importing {args.target} raised:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_ERROR
    if all(aq.settings(n).app_role is Role.PRODUCER for n in aq.names):
        print(
            f"affinity-queue: error: {args.target} runs APP_ROLE=PRODUCER, which runs no "
            "scheduler and no workers; set APP_ROLE=WORKER, SCHEDULER or BOTH for this command",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return asyncio.run(_run_worker(aq, args.target, args.metrics_port))


def _operate(args: argparse.Namespace) -> int:
    """``stats`` and the operator commands: usage errors exit 2 with one line, nothing done."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-8s %(name)s: %(message)s")
    if getattr(args, "target", None):
        args.app = args.target
    try:
        aq, names = ops.open_app(args, load_target)
    except UsageError as e:
        print(f"affinity-queue: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as e:
        if e.title != QueueSettings.__name__:
            raise
        print(f"affinity-queue: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(ops.run(args, aq, names))


def _say(message: str) -> None:
    print(f"affinity-queue: {message}", flush=True)


async def _describe(aq: AffinityQueue) -> None:
    """One line per queue: where it connects, the role it takes, and whether Redis answers."""
    for name in aq.names:
        s = aq.settings(name)
        role = s.app_role
        parts = [
            f"queue {name!r}",
            f"role {role.value}",
            f"Redis {_redacted(s.resolved_redis_url)}",
        ]
        parts.append(f"pending queue {s.pending_queue_name!r}")
        if role.works:
            handlers = aq.worker(name).handler_types
            parts.append(f"{s.worker_count} worker(s)")
            parts.append(f"handlers: {', '.join(handlers) or 'NONE'}")
        leaderless = False
        try:
            stats = await aq.queue(name).get_queue_stats()
            leader = stats.leader.node_id if stats.leader else "none yet"
            leaderless = stats.leader is None and not role.schedules
            parts.append(f"connected ({stats.pending} pending, leader {leader})")
        except QueueUnavailableError as e:
            parts.append(f"NOT connected yet, retrying in the background ({e.__cause__})")
        _say("; ".join(parts))
        if role.works and not aq.worker(name).handler_types:
            _say(f"warning: queue {name!r} has no handlers: every task it runs will fail")
        if leaderless:
            _say(
                f"note: no scheduler leads queue {name!r} yet; tasks wait until a process with "
                "APP_ROLE=SCHEDULER or BOTH runs"
            )


async def _run_worker(aq: AffinityQueue, target: str, metrics_port: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _say(f"{sig.name} again: exiting at once without a graceful stop")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FORCED)
        _say(f"{sig.name}: stopping gracefully (send it again to exit at once)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    roles = sorted({aq.settings(n).app_role for n in aq.names}, key=list(Role).index)
    _say(
        f"{__version__} running {target} (pid {os.getpid()}), "
        f"role {', '.join(r.value for r in roles)}"
    )
    metrics: asyncio.Server | None = None
    if metrics_port is not None:
        from ..observability.metrics import metrics_app, serve

        metrics = await serve(metrics_app(aq), metrics_port)
        _say(f"metrics on http://0.0.0.0:{metrics_port}/metrics")
    try:
        async with aq:
            await _describe(aq)
            await stop.wait()
    finally:
        if metrics is not None:
            metrics.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    _say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
