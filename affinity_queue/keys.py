"""The only module that spells Redis key names.

Every key of a queue carries the queue's hash tag ``{<pending_queue_name>}``, so all of a queue's
keys live in one Redis Cluster slot and a multi-key script never crosses slots.

Scripts receive three prefixes in ``KEYS`` (the queue's, and the worker queue and worker state
prefixes, all carrying the hash tag) and name every key through Lua locals that
:func:`lua_key_names` generates from the tables below, so key names are spelled here only and a
call sends three short arguments, not one per key. Keys that exist per tag, per job or per worker
are *families*: the script appends an id that this module (or a script reading ids that this
module wrote) produced. No key a script builds can leave the queue's slot.

On Redis Cluster the ``KEYS`` are what Redis routes a script by, and what it checks against a
slot that a reshard is moving (MIGRATING on the source, IMPORTING on the target). A script cannot
declare every key it touches (dispatch picks tags out of the ready sets, advance reads the job
that a worker's list names), and declaring only some real keys would be worse than none: on the
source, with the declared keys still there, the script runs, and the first command on a key
already moved fails it *after* its earlier writes ("Script attempted to access a non local key";
Redis keeps what it wrote). So every script declares the three prefixes, keys of the queue's slot
that never exist (no key is named exactly ``{q}:``, ``wq:{q}:`` or ``ws:{q}:``). While the slot
is open the source, lacking them, answers ASK; the target, asked, answers TRYAGAIN, because it
runs a command of several keys only if it has them all. No script of the queue runs until the
move ends (redis-py, the loops and producers retry it: a refused script did nothing), and then it
runs on the new owner with all of the data. Two declared keys at least: a single missing key is
served by the target after ASKING. Single-key reads and writes outside scripts need nothing of
this: Redis serves each from whichever node holds that key. Seen on Redis 7.0.15 in
tests/cluster/test_slot_migration.py and under load in tests/cluster/test_cluster.py.

Tags are user input of any shape (``a:b``, ``{x}``, ``*``, newlines, emoji, long strings), so a tag
never appears raw in a key: :func:`tag_id` hex-encodes it. Hex is reversible (no two tags collide)
and contains no glob character (no tag matches another's keys in a ``SCAN`` pattern).

TAG INDEX. ``backlog`` counts, per tag, the jobs waiting to start: in the tag's pending list or
queued on a worker bound to it, whatever holds them back (a bound worker, a full batch, a
concurrency limit, a pause, a strict retry's hold). Delayed jobs join when they come due; a job
leaves when it starts, is cancelled, or is dropped. The scripts that move a job across that line
change the count in the same step (``backlog()`` in _shared.lua) and remove a tag at zero, so the
index holds exactly the tags with work, and "busiest" is one ``ZREVRANGE`` whatever the number of
tags. A count, not the lists' lengths, because a tag's waiting jobs are spread over its list and
its workers' queues, and ghosts (cancelled deep in a list) still sit in the list. ``tag-names``
holds the same tag ids with score 0 for prefix search: tag ids are the hex of the tag's UTF-8
bytes, so a tag prefix is a hex prefix and ``ZRANGEBYLEX [p (pg`` (``g`` sorts after every hex
digit) finds the matches in O(log tags + matches). Two sets, because a sorted set orders by
score or (among equal scores) by name, not both; ``tag-names`` is written only when a tag gains
its first waiting job or loses its last.

``failed-by:type:<hex type>``, ``failed-by:tag:<tag id>``, ``failed-by:error:<hex error type>``
index the dead letters like ``failed`` (score = finish ms), maintained by the scripts that add,
trim, requeue and delete them, so a filtered page of dead letters reads one range.
``tag-done:<tag id>`` keeps a tag's newest finished job ids (TAG_DONE_KEEP, for its page).
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
    ("K_CONFIG", "config", "hash: the leader's settings, paused, notify (the last watch's end)"),
    ("K_LIMITS", "limits", "hash: tag id -> concurrency limit"),
    ("K_WEIGHTS", "weights", "hash: tag id -> fair-share weight (the leader's settings)"),
    ("K_RATES", "rates", "hash: tag id -> most tasks started per second (the leader's settings)"),
    ("K_BUCKET", "bucket:", "per tag id: 'tokens:ms' of its rate limit; gone = full"),
    ("K_LEADER", "leader", "hash: token fence node host pid since heartbeat (the lease)"),
    ("K_FENCE", "fence", "string: the last fencing number handed out"),
    ("K_ELECTION", "election", "list: pushed when a leader steps down"),
    ("K_EPOCH", "epoch", "string: id of this data set; gone = Redis lost the data"),
    ("K_TURNS", "turns", "hash: tag id -> seq when it last gave up a worker with work left"),
    ("K_VTURNS", "vturns", "zset: tag ids whose turn is weighted (not whole), score = turn"),
    ("K_DELAYED", "delayed", "zset: jobs not yet due, score = due (ms), member = ordered id"),
    ("K_HELD", "held", "zset: tag ids held until due (ms): a strict retry, a rate limit's token"),
    ("K_COMPLETED", "completed", "zset: retention index of completed/cancelled jobs"),
    ("K_FAILED", "failed", "zset: dead letters, score = finish (ms)"),
    ("K_PAUSED_TAGS", "paused-tags", "set: paused tag ids"),
    ("K_GHOSTS", "ghosts", "set: ids cancelled deep in a long tag list, skipped when reached"),
    ("K_DONE", "done", "Pub/Sub channel: ids of finished jobs somebody waits for"),
    ("K_REQ", "req:", "per request token: the reply of a call that must not apply twice"),
    ("K_TRACE", "trace:", "per request token: the trace context of the call that added jobs"),
    ("K_BACKLOG", "backlog", "zset: tag id -> its jobs waiting to start (see TAG INDEX below)"),
    ("K_TAG_NAMES", "tag-names", "zset, all scores 0: the tag ids of K_BACKLOG, by their bytes"),
    ("K_TAG_DONE", "tag-done:", "per tag id: list of its newest finished job ids, newest first"),
    ("K_FAILED_BY", "failed-by:", "per filter: zset of the dead letters of one type/tag/error"),
)
_SUFFIX = {lua: suffix for lua, suffix, _ in QUEUE_KEYS}
WAKE_SUFFIX = "wake:"
"""Per-worker wake lists live under the worker state prefix: ``<state prefix>wake:<worker>``."""


def lua_key_names() -> str:
    """The Lua locals that name every key, prepended to each script (see lua/__init__.py)."""
    lines = [f"local {lua} = KEYS[1] .. '{suffix}'  -- {doc}" for lua, suffix, doc in QUEUE_KEYS]
    lines += [
        "local K_WQ = KEYS[2]  -- per worker id: list of its assigned job ids, in order",
        "local K_WS = KEYS[3]  -- per worker id: hash status tid tag batch active take batches"
        " host pid",
        f"local K_WAKEW = KEYS[3] .. '{WAKE_SUFFIX}'  -- per worker id: list, its wake-ups"
        " ('1', or the run dispatch started: JSON)",
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

    # The tag index (see TAG INDEX above).
    @property
    def backlog(self) -> str:
        return self._key("K_BACKLOG")

    @property
    def tag_names(self) -> str:
        return self._key("K_TAG_NAMES")

    def tag_done(self, tid: str) -> str:
        return self._key("K_TAG_DONE") + tid

    def failed_by(self, field: str, value: str) -> str:
        """The dead-letter index of one ``type``, ``tag`` or ``error`` (type) value."""
        if field not in ("type", "tag", "error"):
            raise ValueError(f"failed_by: field must be type, tag or error, got {field!r}")
        return f"{self._key('K_FAILED_BY')}{field}:{tag_id(value)}"
