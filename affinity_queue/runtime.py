"""QueueRuntime: what the parts of one queue in this process share."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from .keys import QueueKeys
from .lua import Scripts
from .retry import Connectivity
from .settings import QueueSettings


@dataclass(eq=False)
class QueueRuntime:
    """Base of the scheduler and the worker service of one queue: its name, settings, the
    command and blocking clients, its scripts and its connectivity state. Subclasses set up
    their own state in ``__post_init__``."""

    name: str
    settings: QueueSettings
    _redis: Redis
    _blocking: Redis
    _scripts: Scripts
    _net: Connectivity
    _keys: QueueKeys = field(init=False)

    def __post_init__(self) -> None:
        self._keys = self.settings.keys

    def _bind(self, redis: Redis, blocking: Redis, scripts: Scripts) -> None:
        """Use these clients from now on: a start after ``aclose()`` brings fresh ones."""
        self._redis, self._blocking, self._scripts = redis, blocking, scripts
