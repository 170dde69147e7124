"""affinity-queue: a Redis task queue for FastAPI with forced affinity scheduling."""

from .core import AffinityQueue
from .errors import (
    AffinityQueueError,
    DataLostError,
    InvalidTaskError,
    JobFailedError,
    JobNotActiveError,
    LeaseLostError,
    LifecycleError,
    NotLeaderError,
    PayloadTooLargeError,
    PermanentFailure,
    QueueUnavailableError,
    Retry,
    ScriptError,
    TagBacklogFullError,
    UnknownJobError,
    UnknownQueueError,
)
from .fastapi import (
    AffinityQueueDep,
    QueueServiceDep,
    WorkerServiceDep,
    get_affinity_queue,
    get_queue,
    get_queue_service,
    get_worker,
    get_worker_service,
)
from .models import (
    CancelOutcome,
    Job,
    JobContext,
    JobError,
    JobStatus,
    LeaderInfo,
    QueueStats,
    Task,
    WorkerState,
)
from .queue import QueueService
from .scheduler import Scheduler
from .settings import QueueSettings, RetryOrder, Role, TagConcurrency
from .worker import WorkerService

__version__ = "0.1.0"

__all__ = [
    "AffinityQueue",
    "AffinityQueueDep",
    "AffinityQueueError",
    "CancelOutcome",
    "DataLostError",
    "InvalidTaskError",
    "Job",
    "JobContext",
    "JobError",
    "JobFailedError",
    "JobNotActiveError",
    "JobStatus",
    "LeaderInfo",
    "LeaseLostError",
    "LifecycleError",
    "NotLeaderError",
    "PayloadTooLargeError",
    "PermanentFailure",
    "QueueService",
    "QueueServiceDep",
    "QueueSettings",
    "QueueStats",
    "QueueUnavailableError",
    "Retry",
    "RetryOrder",
    "Role",
    "Scheduler",
    "ScriptError",
    "TagBacklogFullError",
    "TagConcurrency",
    "Task",
    "UnknownJobError",
    "UnknownQueueError",
    "WorkerService",
    "WorkerServiceDep",
    "WorkerState",
    "__version__",
    "get_affinity_queue",
    "get_queue",
    "get_queue_service",
    "get_worker",
    "get_worker_service",
]
