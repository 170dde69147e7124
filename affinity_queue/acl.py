"""The least-privilege ACL rule a queue needs, and refusals by the ACL in words.

``acl_rule`` gives the queue's user its keys, its channel and exactly the commands the library
sends (never KEYS, FLUSHDB, CONFIG). ``denial`` names what the ACL refused, even a command a
script runs (Redis checks those against the caller's ACL too).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from typing import TYPE_CHECKING

from redis.exceptions import NoPermissionError, ResponseError

from .lua import SCRIPT_NAMES, script_source

if TYPE_CHECKING:
    from .settings import QueueSettings

SCRIPT_COMMANDS = (
    "del",
    "exists",
    "get",
    "hdel",
    "hget",
    "hincrby",
    "hmget",
    "hset",
    "incr",
    "incrby",
    "lindex",
    "linsert",
    "llen",
    "lpop",
    "lpush",
    "lrange",
    "lrem",
    "ltrim",
    "persist",
    "pexpire",
    "publish",
    "rpush",
    "sadd",
    "scard",
    "set",
    "sismember",
    "srem",
    "time",
    "zadd",
    "zcard",
    "zincrby",
    "zpopmin",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zscore",
)
"""Every command the Lua scripts call (tests/redisprod/test_acl.py checks it against them):
Redis checks a script's inner commands against the caller's ACL too."""

CLIENT_COMMANDS = (
    "blpop",
    "evalsha",
    "exists",
    "get",
    "hdel",
    "hget",
    "hgetall",
    "hkeys",
    "hmget",
    "hset",
    "hsetnx",
    "incrby",
    "info",
    "llen",
    "lindex",
    "scard",
    "script|load",
    "select",
    "set",
    "sismember",
    "sscan",
    "subscribe",
    "time",
    "wait",
    "zadd",
    "zcard",
    "zcount",
    "zrange",
    "zrangebylex",
    "zrem",
    "zrevrange",
    "zrevrangebyscore",
    "zscan",
    "zscore",
)
"""Commands sent from Python: reads of stats and the dashboard, blocking waits, the ``wait_for``
subscription, scripts (``EVALSHA``, ``SCRIPT LOAD`` after a flush), ``WAIT`` and ``INCRBY`` for
REDIS_WAIT_REPLICAS, ``INFO`` for the start checks (optional), ``SELECT`` for REDIS_DB."""

ACL_COMMANDS = tuple(sorted(set(SCRIPT_COMMANDS) | set(CLIENT_COMMANDS)))


def acl_rule(settings: QueueSettings) -> str:
    """The ACL rule (after ``ACL SETUSER <user> on >password``) that lets a user run one queue
    and nothing else: its keys, its channel, exactly the commands it sends. Several queues:
    one rule's key and channel patterns each, on one user."""
    keys = settings.keys
    patterns = (keys.queue_prefix, keys.worker_queue_prefix_key, keys.worker_state_prefix_key)
    return " ".join(
        [
            "resetkeys",
            *(f"~{p}*" for p in patterns),
            "resetchannels",
            f"&{keys.done_channel}",
            "-@all",
            *(f"+{c}" for c in ACL_COMMANDS),
        ]
    )


_RUN = re.compile(r"no permissions to run the '([^']+)' command")
_IN_SCRIPT = re.compile(
    r"can't run this command or subcommand script: ([0-9a-f]{40}), on @user_script:(\d+)"
)
_RCALL = re.compile(r"rcall\('([A-Z]+)'")


@cache
def _scripts_by_sha() -> dict[str, str]:
    return {hashlib.sha1(script_source(n).encode()).hexdigest(): n for n in SCRIPT_NAMES}


def denial(e: BaseException) -> str | None:
    """What the ACL refused, in words, or None when ``e`` is no ACL refusal.

    Redis 7.0 does not name a command a script was refused; the script and line it gives do:
    the line of our script source holds the call."""
    if not isinstance(e, ResponseError):
        return None
    text = str(e)
    if m := _RUN.search(text):
        return f"the command {m[1].upper()} (add +{m[1]})"
    if isinstance(e, NoPermissionError) and "keys" in text:
        return "access to one of the queue's keys (check the ~ key patterns)"
    if isinstance(e, NoPermissionError) and "channel" in text:
        return "the queue's Pub/Sub channel (check the & channel pattern)"
    if m := _IN_SCRIPT.search(text):
        name = _scripts_by_sha().get(m[1])
        if name is None:
            return "a command inside a script"
        line = script_source(name).splitlines()[int(m[2]) - 1]
        commands = sorted(set(_RCALL.findall(line)))
        if commands == ["PUBLISH"]:
            what = "PUBLISH or its channel (add +publish and the & channel pattern)"
        else:
            what = " or ".join(commands) + f" (add {' '.join('+' + c.lower() for c in commands)})"
        return f"the command {what} inside the {name} script"
    return None
