"""QueueRuntime: what the parts of one queue in this process share."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from .errors import ConfigMismatchError
from .keys import QueueKeys
from .lua import Scripts
from .retry import Connectivity, RedisTrouble
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

    async def check_layout(self) -> None:
        """Raise :class:`ConfigMismatchError` at start when the queue's running processes use
        other worker prefixes. A read only, so start fails early and clearly; the ``register``
        and ``elect`` scripts make the same check atomically. Skipped while Redis is down."""
        k = self._keys
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.config, ["wq_prefix", "ws_prefix"])
                pipe.exists(k.leader)
                pipe.zcard(k.workers)
                theirs, leader, workers = await pipe.execute()
        except RedisTrouble:
            return
        ours = k.script_keys[1:]
        if theirs[0] is not None and tuple(theirs) != ours and (leader or workers):
            raise ConfigMismatchError(self.name, ours, tuple(theirs))
