"""affinity-queue: a Redis task queue for FastAPI with forced affinity scheduling."""

from .core import AffinityQueue
from .errors import (
    AffinityQueueError,
    DataLostError,
    InvalidTaskError,
    JobNotActiveError,
    LeaseLostError,
    LifecycleError,
    NotLeaderError,
    PayloadTooLargeError,
    QueueUnavailableError,
    ScriptError,
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
from .models import Job, JobContext, JobError, JobStatus, LeaderInfo, QueueStats, Task, WorkerState
from .queue import QueueService
from .scheduler import Scheduler
from .settings import QueueSettings, Role, TagConcurrency
from .worker import WorkerService

__version__ = "0.1.0"

__all__ = [
    "AffinityQueue",
    "AffinityQueueDep",
    "AffinityQueueError",
    "DataLostError",
    "InvalidTaskError",
    "Job",
    "JobContext",
    "JobError",
    "JobNotActiveError",
    "JobStatus",
    "LeaderInfo",
    "LeaseLostError",
    "LifecycleError",
    "NotLeaderError",
    "PayloadTooLargeError",
    "QueueService",
    "QueueServiceDep",
    "QueueSettings",
    "QueueStats",
    "QueueUnavailableError",
    "Role",
    "Scheduler",
    "ScriptError",
    "TagConcurrency",
    "Task",
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
