"""Exceptions raised by affinity-queue.

::

    AffinityQueueError
    ├── InvalidTaskError           (also a ValueError) a task was rejected; nothing was written
    │   └── PayloadTooLargeError   its payload is over MAX_PAYLOAD_BYTES
    ├── TagBacklogFullError        backpressure: the tag holds MAX_PENDING_PER_TAG waiting tasks
    ├── UnknownJobError            (also a KeyError) no job has that id (or it expired)
    ├── JobFailedError             wait_for(): the job failed or was cancelled
    ├── QueueUnavailableError      Redis did not answer (`maybe_written`: it may still apply it),
    │   │                          refused the password (`authentication_failed`) or TLS failed
    │   └── ReplicationTimeoutError  REDIS_WAIT_REPLICAS replicas did not confirm an add in time
    ├── AclDeniedError             Redis's ACL denies a command, key or channel the queue needs
    ├── EvictionPolicyError        REDIS_REQUIRE_NOEVICTION and Redis may evict keys
    ├── UnknownQueueError          (also a KeyError) no queue of that name is declared
    ├── LifecycleError             start() twice, or a service used after aclose()
    ├── RoleError                  asked for workers of a queue whose APP_ROLE runs none
    ├── InvalidScheduleError       (also a ValueError) a periodic task declared wrongly
    ├── ConfigMismatchError        this process's worker prefixes differ from the running ones'
    ├── HookError                  an on_startup hook raised: the workers did not start
    ├── ProgressTooLargeError      (also a ValueError) ctx.set_progress() got too large a value
    └── ScriptError                a script answered with a code this library does not expect
        ├── LeaseLostError         this worker's lease expired; its jobs went elsewhere
        ├── NotLeaderError         this node's term ended; it must not act for the leader
        ├── JobNotActiveError      a worker tried to finish a job that is not its active one
        └── DataLostError          Redis lost the queue's data (restart without persistence)
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from redis.exceptions import AuthenticationError

from .cluster import CLUSTER_REFUSED

if TYPE_CHECKING:
    from .models import Job


class AffinityQueueError(Exception):
    """Base of every error this library raises."""


class InvalidTaskError(AffinityQueueError, ValueError):
    """A task failed validation; the message names the field and what is accepted."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(InvalidTaskError):
    def __init__(self, size: int, limit: int, index: int = 0) -> None:
        super().__init__(
            f"task #{index}: payload is {size} bytes as JSON; MAX_PAYLOAD_BYTES allows {limit}",
            field="payload",
        )
        self.size = size
        self.limit = limit
        self.index = index


class TagBacklogFullError(AffinityQueueError):
    """Backpressure: the tag already holds MAX_PENDING_PER_TAG tasks waiting to start (pending or
    queued to a worker; delayed ones do not count). Nothing was written; retry later (HTTP 429)."""

    def __init__(self, identify_tag: str, limit: int) -> None:
        super().__init__(
            f"tag {identify_tag!r} already holds {limit} tasks waiting to start "
            "(MAX_PENDING_PER_TAG); retry later"
        )
        self.identify_tag = identify_tag
        self.limit = limit


class UnknownJobError(AffinityQueueError, KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (never added, or its record expired)")
        self.job_id = job_id

    def __str__(self) -> str:
        return str(self.args[0])


class JobFailedError(AffinityQueueError):
    """The awaited job ended failed or cancelled; ``job`` holds its record and error."""

    def __init__(self, job: Job) -> None:
        error = job.error.message if job.error else ""
        super().__init__(f"job {job.id} {job.status.value}: {error}")
        self.job = job


class QueueUnavailableError(AffinityQueueError):
    """Redis could not be reached, did not answer within REDIS_TIMEOUT, or no pooled connection
    came free within REDIS_POOL_TIMEOUT. Retry, or report 503.

    Before raising it the library retried the call for up to REDIS_TIMEOUT, with the call's
    request token, so a reply lost in transit never makes a task exist twice. ``maybe_written`` is
    False when nothing reached Redis (no connection could be made or had from the pool, the
    password was refused, or Redis refused the call: out of memory, MISCONF, BUSY). It is True
    when a command was sent and no answer came: Redis may still have applied it, so a blind retry
    by the caller may add a task twice (give the task a ``dedupe_key`` to make the caller's own
    retries safe).

    ``authentication_failed`` is True when Redis refused the password (nothing was written): fix
    REDIS_PASSWORD or the password in REDIS_URL, retrying will not help. ``tls_failed`` is True
    when the TLS handshake failed (a certificate not signed by REDIS_SSL_CA_CERTS, a host name
    it does not carry, a client certificate the server refused): fix the TLS settings.
    """

    def __init__(
        self,
        queue: str,
        cause: BaseException,
        *,
        maybe_written: bool | None = None,
        what: str | None = None,
    ) -> None:
        self.authentication_failed = isinstance(cause, AuthenticationError)
        self.tls_failed = tls_failure(cause)
        if maybe_written is None:
            maybe_written = not never_sent(cause)
        self.maybe_written = maybe_written and not self.authentication_failed
        outcome = "it may have been applied" if self.maybe_written else "nothing was written"
        if what is None:
            what = "Redis is unavailable"
            if self.authentication_failed:
                what = AUTH_HINT
            elif self.tls_failed:
                what = TLS_HINT
        super().__init__(f"queue {queue!r}: {what} ({cause}); {outcome}")
        self.queue = queue


AUTH_HINT = "Redis authentication failed; check REDIS_PASSWORD or the password in REDIS_URL"
TLS_HINT = (
    "the TLS connection to Redis failed; check REDIS_SSL_CA_CERTS (the CA that signed the "
    "server's certificate), the host name in REDIS_URL against the certificate "
    "(REDIS_SSL_CHECK_HOSTNAME) and REDIS_SSL_CERTFILE/REDIS_SSL_KEYFILE if the server asks "
    "for a client certificate"
)


def tls_failure(cause: BaseException) -> bool:
    """Whether a connection failed in its TLS handshake (redis-py wraps ``ssl.SSLError``)."""
    text = str(cause)
    return "SSL" in text or "CERTIFICATE" in text.upper()


class ReplicationTimeoutError(QueueUnavailableError):
    """``add`` with REDIS_WAIT_REPLICAS: fewer replicas than asked confirmed the write within
    REDIS_WAIT_TIMEOUT. The master has the tasks (``maybe_written`` is True) but a failover now
    could lose them; give tasks a ``dedupe_key`` to retry safely."""

    def __init__(self, queue: str, acked: int, wanted: int, timeout_ms: int) -> None:
        cause = TimeoutError(f"WAIT {wanted} {timeout_ms}: {acked} acknowledged")
        super().__init__(
            queue,
            cause,
            maybe_written=True,
            what=(
                f"only {acked} of REDIS_WAIT_REPLICAS={wanted} replicas confirmed the write "
                f"within REDIS_WAIT_TIMEOUT={timeout_ms} ms"
            ),
        )
        self.acked = acked
        self.wanted = wanted


class AclDeniedError(AffinityQueueError):
    """Redis's ACL refused a command, key or channel the queue uses: nothing was written by
    the refused command. The message names it and the rule to give the user (see
    :func:`affinity_queue.server.acl_rule`)."""

    def __init__(self, queue: str, denied: str, rule: str) -> None:
        super().__init__(
            f"queue {queue!r}: Redis's ACL denies {denied}; give the Redis user the queue's "
            f"rule: ACL SETUSER <user> {rule}"
        )
        self.queue = queue
        self.denied = denied
        self.rule = rule


class EvictionPolicyError(AffinityQueueError):
    """REDIS_REQUIRE_NOEVICTION is set and Redis's ``maxmemory-policy`` may evict queue keys;
    raised at start, before anything runs."""

    def __init__(self, queue: str, policy: str) -> None:
        super().__init__(
            f"queue {queue!r}: Redis's maxmemory-policy is {policy!r}, which may delete queue "
            "keys (jobs, leases, request tokens) under memory pressure; set maxmemory-policy "
            "noeviction (or unset REDIS_REQUIRE_NOEVICTION to start with a warning)"
        )
        self.queue = queue
        self.policy = policy


def never_sent(cause: BaseException) -> bool:
    """Whether redis-py failed before anything ran: a failed connect, an exhausted pool, or a
    cluster that refused the command (a slot in migration, a failover under way)."""
    if isinstance(cause, CLUSTER_REFUSED):
        return True
    text = str(cause).lower()
    return any(s in text for s in ("connecting", "no connection", "no master found"))


class UnknownQueueError(AffinityQueueError, KeyError):
    def __init__(self, name: str, declared: list[str]) -> None:
        super().__init__(f"no queue named {name!r}; declared queues: {', '.join(declared)}")
        self.name = name
        self.declared = declared

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class LifecycleError(AffinityQueueError):
    """A service was used outside its started lifetime."""


class RoleError(AffinityQueueError):
    """This process's APP_ROLE for the queue does not run what was asked for (a worker service
    in a PRODUCER process, for example)."""

    def __init__(self, queue: str, role: str, wanted: str) -> None:
        super().__init__(
            f"queue {queue!r} runs APP_ROLE={role} in this process, which has no {wanted}; "
            "set APP_ROLE=WORKER or BOTH where workers should run"
        )
        self.queue = queue
        self.role = role


class InvalidScheduleError(AffinityQueueError, ValueError):
    """A periodic task could not be declared: its cron expression, time zone, interval or task
    is invalid. Raised at declaration; the message names the schedule and the problem."""

    def __init__(self, schedule: str, problem: str) -> None:
        super().__init__(f"periodic task {schedule!r}: {problem}")
        self.schedule = schedule
        self.problem = problem


class ConfigMismatchError(AffinityQueueError):
    """Processes of one queue disagree on WORKER_QUEUE_PREFIX / WORKER_STATE_PREFIX: the leader
    would fill worker queues that nobody reads. Raised at start; nothing was written."""

    def __init__(self, queue: str, ours: tuple[str, ...], theirs: tuple[str, ...]) -> None:
        names = ("WORKER_QUEUE_PREFIX", "WORKER_STATE_PREFIX")
        differ = [
            f"{name}={_prefix(a)!r} here but {_prefix(b)!r} in the running processes"
            for name, a, b in zip(names, ours, theirs, strict=True)
            if a != b
        ]
        super().__init__(
            f"queue {queue!r}: {'; '.join(differ)}. Give every process of the queue the same "
            "settings (a queue's worker prefixes can change only once all its processes stopped)"
        )
        self.queue = queue
        self.ours = ours
        self.theirs = theirs


def _prefix(key_prefix: str) -> str:
    """The setting's value from a key prefix ``<setting>:{queue}:``."""
    return key_prefix.rsplit(":{", 1)[0]


class HookError(AffinityQueueError):
    """An ``on_startup`` hook raised: the queue's workers did not start (the cause is chained)."""

    def __init__(self, queue: str, hook: str, cause: BaseException) -> None:
        self.queue, self.hook = queue, hook
        super().__init__(
            f"queue {queue!r}: the on_startup hook {hook} raised {cause!r}; no worker started"
        )


class ProgressTooLargeError(AffinityQueueError, ValueError):
    """``ctx.set_progress()`` got a value whose JSON is over the limit (nothing was written)."""

    def __init__(self, job_id: str, size: int, limit: int) -> None:
        self.job_id, self.size, self.limit = job_id, size, limit
        super().__init__(
            f"job {job_id}: the progress value is {size} bytes of JSON; at most {limit} are "
            "allowed (store large data elsewhere and report a reference)"
        )


class ScriptError(AffinityQueueError):
    """A script returned a code this library does not expect."""


class LeaseLostError(ScriptError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id}: lease lost; its jobs were handed to other workers")
        self.worker_id = worker_id
        self.job_id: str | None = None
        """The job whose finish the lost lease refused, when the worker knows it."""


class NotLeaderError(ScriptError):
    def __init__(self) -> None:
        super().__init__("this node's leadership term has ended")


class JobNotActiveError(ScriptError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id}: the job it finished is not its active job")
        self.worker_id = worker_id


class DataLostError(ScriptError):
    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue {queue!r}: Redis lost this queue's data (restarted without persistence?); "
            "jobs accepted before the loss are gone. Enable AOF (appendonly yes) in production."
        )
        self.queue = queue


class ScriptCode(IntEnum):
    """Negative codes the scripts return (see lua/_shared.lua)."""

    LEASE_LOST = -1
    NOT_LEADER = -2
    NOT_ACTIVE = -3
    DATA_LOST = -4
    TAG_FULL = -5
    LAYOUT = -6
    NEED_LIMITS = -7


# Raised by handlers to steer retries (not errors of this library).


class Retry(Exception):
    """Raise in a handler to retry the job after ``delay_s`` (within its max attempts)."""

    def __init__(self, delay_s: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class PermanentFailure(Exception):
    """Raise in a handler to fail the job now, whatever attempts it has left."""


class BatchFailure(Exception):
    """Raise in a batch handler when task ``index`` of the batch failed with ``error``:
    ``results`` are those of the tasks before it (one each, in order). Task ``index`` follows
    the retry rules (``error`` may be a :class:`Retry` or :class:`PermanentFailure`); the tasks
    after it did not run and go back to the front of their tag, in order."""

    def __init__(self, index: int, error: Exception, results: Sequence[Any] = ()) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"BatchFailure: index must be an integer >= 0, got {index!r}")
        if not isinstance(error, Exception):
            raise TypeError(f"BatchFailure: error must be an exception, got {error!r}")
        if len(results) != index:
            raise ValueError(
                f"BatchFailure: task {index} failed, so {index} results (of the tasks before "
                f"it) are needed, got {len(results)}"
            )
        super().__init__(f"task {index} of the batch failed: {type(error).__name__}: {error}")
        self.index = index
        self.error = error
        self.results = list(results)
