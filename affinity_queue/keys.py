"""The only module that spells Redis key names.

Every key of a queue carries the queue's hash tag ``{<pending_queue_name>}``, so all of a queue's
keys live in one Redis Cluster slot and a multi-key script never crosses slots. Keys that exist per
tag, per job or per worker are *families*: the scripts receive the family's prefix in ``KEYS`` and
append an id that this module (or a script reading ids that this module wrote) produced. That is
the one place where a script extends a key name, and it cannot leave the queue's slot.

Tags are user input of any shape (``a:b``, ``{x}``, ``*``, newlines, emoji, long strings), so a tag
never appears raw in a key: :func:`tag_id` hex-encodes it. Hex is reversible (no two tags collide)
and contains no glob character (no tag matches another's keys in a ``SCAN`` pattern).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
"""What queue names and key prefixes may contain: no braces (they would move the hash tag) and no
glob characters (they would widen the maintenance ``SCAN`` patterns)."""


def tag_id(identify_tag: str) -> str:
    """The key-safe, collision-free spelling of a tag."""
    return identify_tag.encode().hex()


def tag_from_id(tid: str) -> str:
    return bytes.fromhex(tid).decode()


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Key names of one queue. ``script_keys`` is the ``KEYS`` table every script receives."""

    pending_queue_name: str
    worker_queue_prefix: str
    worker_state_prefix: str

    @property
    def base(self) -> str:
        return "{" + self.pending_queue_name + "}"

    # Families (a prefix; the script appends an id).
    @property
    def job_prefix(self) -> str:
        return f"{self.base}:job:"

    @property
    def tag_prefix(self) -> str:
        """Per tag: its pending job ids, oldest first."""
        return f"{self.base}:tag:"

    @property
    def bound_prefix(self) -> str:
        """Per tag: sorted set of the workers bound to it, scored by the batch each has taken."""
        return f"{self.base}:bound:"

    @property
    def worker_queue_prefix_key(self) -> str:
        """Per worker: the job ids assigned to it, in order."""
        return f"{self.worker_queue_prefix}:{self.base}:"

    @property
    def worker_state_prefix_key(self) -> str:
        """Per worker: its state hash (status, tag, batch, active job)."""
        return f"{self.worker_state_prefix}:{self.base}:"

    @property
    def worker_wake_prefix(self) -> str:
        """Per worker: a list the scheduler pushes to when it binds the (idle) worker."""
        return f"{self.worker_state_prefix}:{self.base}:wake:"

    # Single keys.
    @property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @property
    def counts(self) -> str:
        return f"{self.base}:counts"

    @property
    def ready_bound(self) -> str:
        """Tags with pending jobs and a bound worker with room, scored by their head job id."""
        return f"{self.base}:ready:bound"

    @property
    def ready_new(self) -> str:
        """Tags with pending jobs that may take one more (idle) worker, scored by head job id."""
        return f"{self.base}:ready:new"

    @property
    def idle(self) -> str:
        return f"{self.base}:idle"

    @property
    def workers(self) -> str:
        """Index of live workers, scored by the Redis time (ms) their lease expires."""
        return f"{self.base}:workers"

    @property
    def wake(self) -> str:
        """The scheduler's wake-up list: non-empty when placement work may be waiting."""
        return f"{self.base}:wake"

    @property
    def config(self) -> str:
        return f"{self.base}:config"

    @property
    def limits(self) -> str:
        """Per-tag concurrency overrides (tag id -> limit), written by the leader."""
        return f"{self.base}:limits"

    @property
    def leader(self) -> str:
        return f"{self.base}:leader"

    @property
    def fence(self) -> str:
        return f"{self.base}:fence"

    @property
    def election(self) -> str:
        """Pushed to when a leader steps down, so a standby takes over at once."""
        return f"{self.base}:election"

    @property
    def epoch(self) -> str:
        """Written once per data set; its disappearance means Redis lost the queue's data."""
        return f"{self.base}:epoch"

    @property
    def turns(self) -> str:
        """Tag id -> the job sequence number at which the tag last gave up a worker with work
        left: it ranks behind every job added before then (see refresh_tag)."""
        return f"{self.base}:turns"

    @property
    def delayed(self) -> str:
        """Job ids not yet due (delayed tasks, relaxed retries), scored by due time (ms)."""
        return f"{self.base}:delayed"

    @property
    def held(self) -> str:
        """Tag ids held back until a strict retry at their head is due, scored by due time."""
        return f"{self.base}:held"

    @property
    def completed(self) -> str:
        """Retention index of completed (and cancelled) jobs, scored by finish time (ms)."""
        return f"{self.base}:completed"

    @property
    def failed(self) -> str:
        """Dead letters: failed job ids, scored by finish time (ms)."""
        return f"{self.base}:failed"

    @property
    def paused_tags(self) -> str:
        return f"{self.base}:paused-tags"

    @property
    def dedupe_prefix(self) -> str:
        """Per deduplication key (hex-encoded): the id of the job it admitted."""
        return f"{self.base}:dedupe:"

    @property
    def done_channel(self) -> str:
        """Pub/Sub channel: the ids of finished jobs somebody waits for."""
        return f"{self.base}:done"

    @property
    def script_keys(self) -> tuple[str, ...]:
        """``KEYS`` for every script, in the order ``lua/_shared.lua`` unpacks them."""
        return (
            self.job_prefix,
            self.tag_prefix,
            self.bound_prefix,
            self.worker_queue_prefix_key,
            self.worker_state_prefix_key,
            self.worker_wake_prefix,
            self.seq,
            self.counts,
            self.ready_bound,
            self.ready_new,
            self.idle,
            self.workers,
            self.wake,
            self.config,
            self.limits,
            self.leader,
            self.fence,
            self.election,
            self.epoch,
            self.turns,
            self.delayed,
            self.held,
            self.completed,
            self.failed,
            self.paused_tags,
            self.dedupe_prefix,
            self.done_channel,
        )

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def worker_state(self, worker_id: str) -> str:
        return self.worker_state_prefix_key + worker_id

    def worker_queue(self, worker_id: str) -> str:
        return self.worker_queue_prefix_key + worker_id

    def worker_wake(self, worker_id: str) -> str:
        return self.worker_wake_prefix + worker_id

    def tag_queue(self, identify_tag: str) -> str:
        return self.tag_prefix + tag_id(identify_tag)

    @property
    def scan_patterns(self) -> tuple[str, ...]:
        """``SCAN`` patterns that match only this queue's per-worker keys."""
        return (self.worker_queue_prefix_key + "*", self.worker_state_prefix_key + "*")
