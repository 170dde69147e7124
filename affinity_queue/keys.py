"""The only module that spells Redis key names.

Every key of a queue carries the queue's hash tag ``{<pending_queue_name>}``, so all of a queue's
keys live in one Redis Cluster slot and a multi-key script never crosses slots.

Scripts receive three prefixes in ``KEYS`` (the queue's, and the worker queue and worker state
prefixes, all carrying the hash tag) and name every key through Lua locals that
:func:`lua_key_names` generates from the tables below, so key names are spelled here only and a
call sends three short arguments, not one per key. Keys that exist per tag, per job or per worker
are *families*: the script appends an id that this module (or a script reading ids that this
module wrote) produced. No key a script builds can leave the queue's slot.

Tags are user input of any shape (``a:b``, ``{x}``, ``*``, newlines, emoji, long strings), so a tag
never appears raw in a key: :func:`tag_id` hex-encodes it. Hex is reversible (no two tags collide)
and contains no glob character (no tag matches another's keys in a ``SCAN`` pattern).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
"""What queue names and key prefixes may contain: no braces (they would move the hash tag) and no
glob characters (they would widen a ``SCAN`` pattern over the queue's keys)."""


def tag_id(identify_tag: str) -> str:
    """The key-safe, collision-free spelling of a tag."""
    return identify_tag.encode().hex()


def tag_from_id(tid: str) -> str:
    return bytes.fromhex(tid).decode()


# (Lua name, suffix after "{queue}:", what it holds). The order is the order of the Lua locals.
QUEUE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("K_JOB", "job:", "per job id: hash type tag tid payload status worker attempts ..."),
    ("K_TAG", "tag:", "per tag id: list of its pending job ids, oldest first"),
    ("K_BOUND", "bound:", "per tag id: zset of the workers bound to it, score = batch taken"),
    ("K_DEDUPE", "dedupe:", "per hex deduplication key: the id of the job it admitted"),
    ("K_SEQ", "seq", "string: the last order number (job ids and turns take the next one)"),
    ("K_COUNTS", "counts", "hash: pending delayed assigned active, and outcome totals"),
    ("K_READY_BOUND", "ready:bound", "zset: tags with work and a bound worker with room"),
    ("K_READY_NEW", "ready:new", "zset: tags with work that may bind one more worker"),
    ("K_IDLE", "idle", "zset: idle worker ids, score = when they became idle (ms)"),
    ("K_WORKERS", "workers", "zset: live worker ids, score = lease expiry (Redis ms)"),
    ("K_WAKE", "wake", "list: non-empty when the scheduler has placement work"),
    ("K_CONFIG", "config", "hash: the leader's scheduling and retention settings, paused"),
    ("K_LIMITS", "limits", "hash: tag id -> concurrency limit"),
    ("K_LEADER", "leader", "hash: token fence node host pid since heartbeat (the lease)"),
    ("K_FENCE", "fence", "string: the last fencing number handed out"),
    ("K_ELECTION", "election", "list: pushed when a leader steps down"),
    ("K_EPOCH", "epoch", "string: id of this data set; gone = Redis lost the data"),
    ("K_TURNS", "turns", "hash: tag id -> seq when it last gave up a worker with work left"),
    ("K_DELAYED", "delayed", "zset: jobs not yet due, score = due (ms), member = ordered id"),
    ("K_HELD", "held", "zset: tag ids held until a strict retry is due (ms)"),
    ("K_COMPLETED", "completed", "zset: retention index of completed/cancelled jobs"),
    ("K_FAILED", "failed", "zset: dead letters, score = finish (ms)"),
    ("K_PAUSED_TAGS", "paused-tags", "set: paused tag ids"),
    ("K_GHOSTS", "ghosts", "set: ids cancelled deep in a long tag list, skipped when reached"),
    ("K_DONE", "done", "Pub/Sub channel: ids of finished jobs somebody waits for"),
    ("K_REQ", "req:", "per request token: the reply of a call that must not apply twice"),
    ("K_TRACE", "trace:", "per request token: the trace context of the call that added jobs"),
)
_SUFFIX = {lua: suffix for lua, suffix, _ in QUEUE_KEYS}
WAKE_SUFFIX = "wake:"
"""Per-worker wake lists live under the worker state prefix: ``<state prefix>wake:<worker>``."""


def lua_key_names() -> str:
    """The Lua locals that name every key, prepended to each script (see lua/__init__.py)."""
    lines = [f"local {lua} = KEYS[1] .. '{suffix}'  -- {doc}" for lua, suffix, doc in QUEUE_KEYS]
    lines += [
        "local K_WQ = KEYS[2]  -- per worker id: list of its assigned job ids, in order",
        "local K_WS = KEYS[3]  -- per worker id: hash status tid tag batch active host pid",
        f"local K_WAKEW = KEYS[3] .. '{WAKE_SUFFIX}'  -- per worker id: list, its wake-ups",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Key names of one queue. ``script_keys`` is the ``KEYS`` table every script receives."""

    pending_queue_name: str
    worker_queue_prefix: str
    worker_state_prefix: str

    @property
    def base(self) -> str:
        return "{" + self.pending_queue_name + "}"

    @property
    def queue_prefix(self) -> str:
        return f"{self.base}:"

    def _key(self, lua: str) -> str:
        return self.queue_prefix + _SUFFIX[lua]

    @property
    def worker_queue_prefix_key(self) -> str:
        return f"{self.worker_queue_prefix}:{self.base}:"

    @property
    def worker_state_prefix_key(self) -> str:
        return f"{self.worker_state_prefix}:{self.base}:"

    @property
    def script_keys(self) -> tuple[str, str, str]:
        """``KEYS`` for every script, in the order :func:`lua_key_names` reads them."""
        return (self.queue_prefix, self.worker_queue_prefix_key, self.worker_state_prefix_key)

    # Families (a prefix; an id follows).
    @property
    def job_prefix(self) -> str:
        return self._key("K_JOB")

    @property
    def tag_prefix(self) -> str:
        return self._key("K_TAG")

    @property
    def bound_prefix(self) -> str:
        return self._key("K_BOUND")

    @property
    def dedupe_prefix(self) -> str:
        return self._key("K_DEDUPE")

    @property
    def worker_wake_prefix(self) -> str:
        return self.worker_state_prefix_key + WAKE_SUFFIX

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def tag_queue(self, identify_tag: str) -> str:
        return self.tag_prefix + tag_id(identify_tag)

    def worker_state(self, worker_id: str) -> str:
        return self.worker_state_prefix_key + worker_id

    def worker_queue(self, worker_id: str) -> str:
        return self.worker_queue_prefix_key + worker_id

    def worker_wake(self, worker_id: str) -> str:
        return self.worker_wake_prefix + worker_id

    # Single keys read from Python.
    @property
    def counts(self) -> str:
        return self._key("K_COUNTS")

    @property
    def seq(self) -> str:
        return self._key("K_SEQ")

    @property
    def config(self) -> str:
        return self._key("K_CONFIG")

    @property
    def workers(self) -> str:
        return self._key("K_WORKERS")

    @property
    def wake(self) -> str:
        return self._key("K_WAKE")

    @property
    def leader(self) -> str:
        return self._key("K_LEADER")

    @property
    def election(self) -> str:
        return self._key("K_ELECTION")

    @property
    def epoch(self) -> str:
        return self._key("K_EPOCH")

    @property
    def ready_bound(self) -> str:
        return self._key("K_READY_BOUND")

    @property
    def ready_new(self) -> str:
        return self._key("K_READY_NEW")

    def trace(self, token: str) -> str:
        return self._key("K_TRACE") + token

    @property
    def failed(self) -> str:
        return self._key("K_FAILED")

    @property
    def periodic_ticks(self) -> str:
        """zset: periodic schedule name -> the newest tick enqueued (ms); only grows (ZADD GT).
        Not a script key: only the leader's periodic step (periodic.py) touches it."""
        return self.queue_prefix + "periodic:ticks"

    @property
    def periodic_info(self) -> str:
        """hash: periodic schedule name -> JSON of its spec, next and last run, last job id."""
        return self.queue_prefix + "periodic:info"

    @property
    def done_channel(self) -> str:
        return self._key("K_DONE")

    # Read by the dashboard and the CLI (indexes the scripts maintain).
    def tag_queue_id(self, tid: str) -> str:
        return self.tag_prefix + tid

    def bound(self, tid: str) -> str:
        return self.bound_prefix + tid

    @property
    def completed(self) -> str:
        return self._key("K_COMPLETED")

    @property
    def delayed(self) -> str:
        return self._key("K_DELAYED")

    @property
    def paused_tags(self) -> str:
        return self._key("K_PAUSED_TAGS")

    @property
    def limits(self) -> str:
        return self._key("K_LIMITS")
