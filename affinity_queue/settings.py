"""QueueSettings: every knob, read from the environment and ``.env`` under the original's names.

Each field reads one variable (``VARIABLES``). ``QueueSettings(_env_prefix="AQ_")`` (or a subclass
with ``env_prefix`` in its ``model_config``) reads ``AQ_MAX_BATCH_SIZE`` etc. instead, and
``QueueSettings.for_queue("high-priority")`` reads ``HIGH_PRIORITY__MAX_BATCH_SIZE`` first and
falls back to ``MAX_BATCH_SIZE``, so a named queue can be configured on its own.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .cluster import CLUSTER_SCHEMES, is_cluster_url, parse_cluster_url
from .connections import is_sentinel, parse_sentinel_url
from .keys import NAME_PATTERN, QueueKeys

MAX_ATTEMPTS_LIMIT = 1000
"""The most runs a task may get (MAX_ATTEMPTS and ``add(max_attempts=)``)."""

REDIS_SCHEMES = (
    *("redis", "rediss", "unix", "memory", "redis+sentinel", "rediss+sentinel"),
    *CLUSTER_SCHEMES,
)


class Role(StrEnum):
    """What a process runs for a queue. Every role can add tasks and read jobs and stats;
    ``PRODUCER`` does only that (an API replica that must not run tasks or lead)."""

    SCHEDULER = "SCHEDULER"
    WORKER = "WORKER"
    BOTH = "BOTH"
    PRODUCER = "PRODUCER"

    @property
    def schedules(self) -> bool:
        """Takes part in the election; the leader dispatches, reaps and runs periodic tasks."""
        return self in (Role.SCHEDULER, Role.BOTH)

    @property
    def works(self) -> bool:
        return self in (Role.WORKER, Role.BOTH)


class RetryOrder(StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"


class TagConcurrency(BaseModel):
    """How many workers may run one tag at once: ``default`` for every tag, ``limits`` per tag."""

    default: int = Field(1, ge=1)
    limits: dict[str, Annotated[int, Field(ge=1)]] = {}

    def for_tag(self, identify_tag: str) -> int:
        return self.limits.get(identify_tag, self.default)


MAX_WEIGHT = 1_000_000.0
"""The largest weight (and the largest 1 / weight): turns stay far inside a double's precision."""


def check_weight(value: Any, what: str) -> float:
    """``value`` as a weight, or a ValueError naming ``what`` (a tag) and the value."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 1 / MAX_WEIGHT <= value <= MAX_WEIGHT
    ):
        raise ValueError(
            f"the weight of {what} must be a number above 0 (from {1 / MAX_WEIGHT:g} to "
            f"{MAX_WEIGHT:g}), got {value!r}"
        )
    return float(value)


def check_rate(value: Any, what: str) -> float:
    """``value`` as a rate limit in tasks per second, or a ValueError naming ``what`` and it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(
            f"the rate limit of {what} must be a number of tasks per second above 0, got {value!r}"
        )
    return float(value)


class TagWeights(BaseModel):
    """Fair shares: under contention, tags with work start tasks in proportion to their weight."""

    default: float = 1.0
    weights: dict[str, float] = {}

    def for_tag(self, identify_tag: str) -> float:
        return self.weights.get(identify_tag, self.default)


class TagRates(BaseModel):
    """Most tasks started per second: ``default`` for every tag (None = no limit), ``rates``
    per tag."""

    default: float | None = None
    rates: dict[str, float] = {}

    def for_tag(self, identify_tag: str) -> float | None:
        return self.rates.get(identify_tag, self.default)


def _tag_map(value: Any, inner: str, example: str) -> Any:
    """The shapes of a per-tag setting: a number (every tag), JSON ``{"default": d, "tag": v}``,
    or ``{"default": d, "<inner>": {...}}``, which can name any tag (even ``default``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"must be a number, or JSON such as {example}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"default": value}
    # The flat form names every tag but "default" (and a tag called like `inner` whose value is
    # not an object).
    if isinstance(value, dict) and not (
        isinstance(value.get(inner), dict) and value.keys() <= {"default", inner}
    ):
        return {
            "default": value.get("default"),
            inner: {k: v for k, v in value.items() if k != "default"},
        }
    return value


def _checked(value: Any, inner: str, check: Callable[[Any, str], float], default: Any) -> Any:
    """Each value of a per-tag map checked by ``check``, so an error names the tag and value."""
    if not isinstance(value, dict) or not isinstance(value.get(inner, {}), dict):
        return value  # pydantic reports the wrong shape
    d = value.get("default")
    out = {
        "default": default if d is None else check(d, "every tag (default)"),
        inner: {tag: check(v, f"tag {tag!r}") for tag, v in value.get(inner, {}).items()},
    }
    return out


Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern)]

_KEY_NAMES = ("pending_queue_name", "worker_queue_prefix", "worker_state_prefix")
_NAMES_KEY = "__variables__"
"""Where the settings source tells the validator which variable gave each field."""
_queue_scope: ContextVar[str | None] = ContextVar("affinity_queue_settings_scope", default=None)


def queue_variable_prefix(queue: str) -> str:
    """``high-priority`` -> ``HIGH_PRIORITY__``: the prefix of a named queue's own variables."""
    return re.sub(r"[^A-Z0-9]", "_", queue.upper()) + "__"


class _Variables(PydanticBaseSettingsSource):
    """Reads each field from its variable in the environment, then in ``.env``.

    Names tried, first found wins: ``<prefix><QUEUE>__<NAME>`` (under :meth:`for_queue`), then
    ``<prefix><NAME>``. A named queue's key names do not fall back: without their own variable
    they are the plain ones with ``-<queue>`` appended, so the queue keeps keys of its own.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: EnvSettingsSource,
        dotenv: EnvSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._prefix = env.env_prefix
        self._sources = (env.env_vars, dotenv.env_vars)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every field itself

    def _lookup(self, name: str) -> str | None:
        for source in self._sources:
            value = source.get(name.lower())  # both sources fold names to lower case
            if value:  # empty means "not set", as REDIS_URL= in .env.example
                return value
        return None

    def __call__(self) -> dict[str, Any]:
        queue = _queue_scope.get()
        data: dict[str, Any] = {}
        names: dict[str, str] = {}
        for field, variable in QueueSettings.VARIABLES.items():
            plain = self._prefix + variable
            names[field] = plain
            if queue is not None:
                own = self._prefix + queue_variable_prefix(queue) + variable
                if (value := self._lookup(own)) is not None:
                    data[field], names[field] = value, own
                    continue
                if field in _KEY_NAMES:
                    default = QueueSettings.model_fields[field].default
                    data[field] = f"{self._lookup(plain) or default}-{queue}"
                    continue
            if (value := self._lookup(plain)) is not None:
                data[field] = value
        data[_NAMES_KEY] = names
        return data


def url_password(url: str) -> str | None:
    """The password a Redis URL carries, in its user part or as ``?password=``."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    return next(iter(parse_qs(parts.query).get("password", [])), None)


def _with_password(url: str, password: str) -> str:
    if url.startswith("unix:"):
        return f"{url}{'&' if '?' in url else '?'}{urlencode({'password': password})}"
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class QueueSettings(BaseSettings):
    """Configuration of one queue. Environment variables win over ``.env``; keywords (by Python
    name or by variable name) win over both.

    A bad value raises ``pydantic.ValidationError`` at construction, naming the variable that was
    read (``AQ_MAX_BATCH_SIZE``, ``HIGH_PRIORITY__MAX_BATCH_SIZE``), never its value: a URL or a
    password must not end up in a log.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,  # REDIS_URL= in a .env file means "not set"
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,
    )

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "redis_url": "REDIS_URL",
        "redis_host": "REDIS_HOST",
        "redis_port": "REDIS_PORT",
        "redis_password": "REDIS_PASSWORD",
        "redis_db": "REDIS_DB",
        "redis_timeout_ms": "REDIS_TIMEOUT",
        "redis_max_connections": "REDIS_MAX_CONNECTIONS",
        "redis_pool_timeout_ms": "REDIS_POOL_TIMEOUT",
        "redis_username": "REDIS_USERNAME",
        "redis_ssl_ca_certs": "REDIS_SSL_CA_CERTS",
        "redis_ssl_certfile": "REDIS_SSL_CERTFILE",
        "redis_ssl_keyfile": "REDIS_SSL_KEYFILE",
        "redis_ssl_check_hostname": "REDIS_SSL_CHECK_HOSTNAME",
        "redis_wait_replicas": "REDIS_WAIT_REPLICAS",
        "redis_wait_timeout_ms": "REDIS_WAIT_TIMEOUT",
        "redis_require_noeviction": "REDIS_REQUIRE_NOEVICTION",
        "pending_queue_name": "PENDING_QUEUE_NAME",
        "worker_queue_prefix": "WORKER_QUEUE_PREFIX",
        "worker_state_prefix": "WORKER_STATE_PREFIX",
        "max_batch_size": "MAX_BATCH_SIZE",
        "worker_count": "WORKER_COUNT",
        "scheduler_interval_ms": "SCHEDULER_INTERVAL",
        "app_role": "APP_ROLE",
        "election_lock_ttl_ms": "ELECTION_LOCK_TTL",
        "heartbeat_interval_ms": "HEARTBEAT_INTERVAL",
        "heartbeat_timeout_ms": "HEARTBEAT_TIMEOUT",
        "identify_tag_concurrency": "IDENTIFY_TAG_CONCURRENCY",
        "identify_tag_weight": "IDENTIFY_TAG_WEIGHT",
        "identify_tag_rate": "IDENTIFY_TAG_RATE",
        "max_payload_bytes": "MAX_PAYLOAD_BYTES",
        "max_attempts": "MAX_ATTEMPTS",
        "retry_backoff_ms": "RETRY_BACKOFF",
        "retry_backoff_max_ms": "RETRY_BACKOFF_MAX",
        "retry_order": "RETRY_ORDER",
        "task_timeout_ms": "TASK_TIMEOUT",
        "keep_completed": "KEEP_COMPLETED",
        "completed_ttl_ms": "COMPLETED_TTL",
        "keep_failed": "KEEP_FAILED",
        "failed_ttl_ms": "FAILED_TTL",
        "max_pending_per_tag": "MAX_PENDING_PER_TAG",
        "shutdown_grace_period_ms": "SHUTDOWN_GRACE_PERIOD",
    }
    """The variable each field reads (before any prefix): the original package's names."""

    redis_url: str | None = Field(None)
    """Overrides REDIS_HOST/PORT/DB (redis://, rediss://, unix:// or memory://, an in-process
    store; redis+cluster://host:port,host:port for Redis Cluster, rediss+cluster:// with TLS).
    REDIS_PASSWORD fills in a URL without a password; a URL with one plus REDIS_PASSWORD is an
    error."""
    redis_host: str = Field("localhost")
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_password: SecretStr | None = Field(None)
    redis_db: int = Field(0, ge=0)
    redis_timeout_ms: int = Field(2000, ge=50)
    """How long one command may take before it fails (a producer then gets
    QueueUnavailableError). Blocking waits get this on top of their own timeout."""
    redis_max_connections: int = Field(
        50,
        ge=2,
        le=10_000,
    )
    """Connections one queue's producers and workers share for commands (one of them is held by
    the subscription behind ``wait_for``). Past it, a command waits for a free one (see
    REDIS_POOL_TIMEOUT) instead of failing. Blocking waits and the scheduler have pools of their
    own, sized from WORKER_COUNT, so they never compete with producers."""
    redis_pool_timeout_ms: int = Field(
        10_000,
        ge=10,
    )
    """How long a command waits for a free pooled connection before it fails (a producer then
    gets QueueUnavailableError with ``maybe_written`` False): a burst queues, it is not refused."""
    redis_username: str | None = Field(None)
    """The ACL user (Redis 6+); REDIS_URL may carry it instead (``redis://user:pw@host``)."""
    redis_ssl_ca_certs: str | None = Field(None)
    """TLS (``rediss://``): the CA file that signed the server's certificate (default: the
    system's CAs)."""
    redis_ssl_certfile: str | None = Field(None)
    """TLS: this client's certificate, for servers that ask for one (``tls-auth-clients``)."""
    redis_ssl_keyfile: str | None = Field(None)
    """TLS: the key of REDIS_SSL_CERTFILE."""
    redis_ssl_check_hostname: bool = Field(True)
    """TLS: whether the server's certificate must name the host connected to."""
    redis_wait_replicas: int = Field(0, ge=0, le=100)
    """Durability: ``add`` returns only once this many replicas acknowledged its write
    (Redis ``WAIT``); 0 = return when the master has it (replication is asynchronous)."""
    redis_wait_timeout_ms: int = Field(1000, ge=1)
    """How long ``add`` waits for REDIS_WAIT_REPLICAS acknowledgements before it raises
    ReplicationTimeoutError (``maybe_written`` True); below REDIS_TIMEOUT."""
    redis_require_noeviction: bool = Field(False)
    """Refuse to start when Redis's ``maxmemory-policy`` may evict keys (else: a warning)."""

    pending_queue_name: Name = Field(
        "pending-tasks",
    )
    worker_queue_prefix: Name = Field(
        "worker-queue",
    )
    worker_state_prefix: Name = Field(
        "worker-state",
    )

    max_batch_size: int = Field(10, ge=1, le=100_000)
    worker_count: int = Field(1, ge=1, le=1000)
    scheduler_interval_ms: int = Field(
        1000,
        ge=10,
    )
    app_role: Role = Field(Role.BOTH)
    election_lock_ttl_ms: int = Field(
        30_000,
        ge=100,
    )
    heartbeat_interval_ms: int = Field(
        10_000,
        ge=10,
    )
    heartbeat_timeout_ms: int = Field(
        60_000,
        ge=100,
    )
    identify_tag_concurrency: TagConcurrency = Field(
        TagConcurrency(),
    )
    """A number (every tag); JSON ``{"default": 1, "tenant-a": 3}``; or, to name any tag (even
    one called ``default``), ``{"default": 1, "limits": {"default": 3}}``."""
    identify_tag_weight: TagWeights = Field(TagWeights())
    """Fair shares under contention: a number (every tag); JSON ``{"default": 1, "tenant-a": 3}``;
    or ``{"default": 1, "weights": {"default": 3}}``. ``add(weight=)`` wins for its tasks."""
    identify_tag_rate: TagRates = Field(TagRates())
    """Most tasks started per second per tag (none by default): a number (every tag); JSON
    ``{"tenant-a": 50}``; or ``{"default": 100, "rates": {"default": 5}}``."""
    max_payload_bytes: int = Field(1_048_576, ge=1)
    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT)
    """Runs a task gets before it fails for good (1 = no retries); ``add(max_attempts=)`` wins."""
    retry_backoff_ms: int = Field(1000, ge=0)
    """Base of the exponential backoff: retry n waits a random time up to base * 2**(n-1)."""
    retry_backoff_max_ms: int = Field(
        3_600_000,
        ge=0,
    )
    retry_order: RetryOrder = Field(RetryOrder.STRICT)
    """strict: a retrying task keeps its place at the head of its tag and later tasks wait;
    relaxed: the tag goes on and the retry re-enters when due."""
    task_timeout_ms: int = Field(0, ge=0)
    """Default handler timeout (0 = none); per type or per task settings win."""
    keep_completed: int = Field(100_000, ge=1)
    completed_ttl_ms: int = Field(86_400_000, ge=1)
    keep_failed: int = Field(100_000, ge=1)
    failed_ttl_ms: int = Field(604_800_000, ge=1)
    max_pending_per_tag: int = Field(0, ge=0)
    """Backpressure: ``add`` raises TagBacklogFullError past this many pending tasks of one
    tag (0 = no limit)."""
    shutdown_grace_period_ms: int = Field(
        30_000,
        ge=0,
    )
    """How long a stopping worker lets its running task finish before cancelling it."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, EnvSettingsSource)
        return init_settings, _Variables(settings_cls, env_settings, dotenv_settings)

    @classmethod
    def for_queue(cls, queue: str, **values: Any) -> Self:
        """The settings of the named queue ``queue``: ``<QUEUE>__<NAME>`` variables first (``-``
        and other signs become ``_``), then the plain ones; its key names default to the plain
        ones with ``-<queue>`` appended."""
        token = _queue_scope.set(queue)
        try:
            return cls(**values)
        finally:
            _queue_scope.reset(token)

    @field_validator("app_role", mode="before")
    @classmethod
    def _role_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("retry_order", mode="before")
    @classmethod
    def _order_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        # The message never repeats the URL: it may hold a password.
        scheme, sep, _ = (value or "").partition("://")
        if value is not None and (not sep or scheme.lower() not in REDIS_SCHEMES):
            raise ValueError(
                "must be a URL starting with redis://, rediss://, unix://, memory://, "
                "redis+sentinel://, redis+cluster:// (or rediss+ of either) (for example "
                "redis://localhost:6379/0 or redis+sentinel://host1:26379,host2:26379/mymaster)"
            )
        if value is not None and is_cluster_url(value):
            parse_cluster_url(value)  # raises naming what is wrong
        if value is not None and is_sentinel(value):
            parse_sentinel_url(value)  # its ValueError names what is wrong
        return value

    @field_validator("identify_tag_concurrency", mode="before")
    @classmethod
    def _concurrency_shapes(cls, value: Any) -> Any:
        value = _tag_map(value, "limits", '{"default": 1, "tenant-a": 3}')
        if isinstance(value, dict) and value.get("default") is None:
            value = {**value, "default": 1}
        return value

    @field_validator("identify_tag_weight", mode="before")
    @classmethod
    def _weight_shapes(cls, value: Any) -> Any:
        if isinstance(value, TagWeights):
            return value
        shaped = _tag_map(value, "weights", '{"default": 1, "tenant-a": 3}')
        return _checked(shaped, "weights", check_weight, 1.0)

    @field_validator("identify_tag_rate", mode="before")
    @classmethod
    def _rate_shapes(cls, value: Any) -> Any:
        if isinstance(value, TagRates):
            return value
        return _checked(_tag_map(value, "rates", '{"tenant-a": 50}'), "rates", check_rate, None)

    @model_validator(mode="after")
    def _timings_agree(self) -> Self:
        if self.redis_url and self.redis_password and url_password(self.redis_url):
            raise ValueError(
                "REDIS_URL has a password and REDIS_PASSWORD is set too: keep only one of them"
            )
        self._redis_options_agree()
        if self.worker_queue_prefix == self.worker_state_prefix:
            raise ValueError(
                "WORKER_QUEUE_PREFIX and WORKER_STATE_PREFIX must differ "
                f"(both are {self.worker_queue_prefix!r}): their keys would collide"
            )
        # A leader acts within 80% of its lease from its last renewal (scheduler.LEASE_SAFETY):
        # a renewal must come well before that, or the leader keeps losing its own term.
        if 2 * self.heartbeat_interval_ms > self.election_lock_ttl_ms:
            raise ValueError(
                "HEARTBEAT_INTERVAL must be at most half of ELECTION_LOCK_TTL "
                f"(got {self.heartbeat_interval_ms} and {self.election_lock_ttl_ms} ms)"
            )
        if self.heartbeat_interval_ms >= self.heartbeat_timeout_ms:
            raise ValueError(
                "HEARTBEAT_INTERVAL must be shorter than HEARTBEAT_TIMEOUT "
                f"(got {self.heartbeat_interval_ms} >= {self.heartbeat_timeout_ms} ms)"
            )
        return self

    def _redis_options_agree(self) -> None:
        url = self.redis_url or ""
        if self.redis_username and urlsplit(url).username:
            raise ValueError(
                "REDIS_URL has a user name and REDIS_USERNAME is set too: keep only one of them"
            )
        if self.redis_wait_replicas and url.startswith("memory:"):
            raise ValueError("REDIS_WAIT_REPLICAS needs a Redis with replicas; memory:// has none")
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_timeout_ms:
            raise ValueError(
                "REDIS_WAIT_TIMEOUT must be shorter than REDIS_TIMEOUT (the WAIT runs within one "
                f"command; got {self.redis_wait_timeout_ms} >= {self.redis_timeout_ms} ms)"
            )
        tls = {
            "REDIS_SSL_CA_CERTS": self.redis_ssl_ca_certs,
            "REDIS_SSL_CERTFILE": self.redis_ssl_certfile,
            "REDIS_SSL_KEYFILE": self.redis_ssl_keyfile,
        }
        given = [name for name, path in tls.items() if path]
        if given and not url.lower().startswith("rediss"):
            raise ValueError(
                f"{' and '.join(given)} set, but REDIS_URL does not start with rediss:// "
                "(or rediss+sentinel://): TLS files apply to TLS connections only"
            )
        for name, path in tls.items():
            if path and not os.path.isfile(path):
                raise ValueError(f"{name}: no file at {path!r}")
        if bool(self.redis_ssl_certfile) != bool(self.redis_ssl_keyfile):
            raise ValueError("REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together: set both")

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_variables(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # An error names the variable that was read (AQ_MAX_BATCH_SIZE), however the value was
        # given: keyword arguments would otherwise be reported under the Python name.
        names: dict[str, str] = {}
        if isinstance(data, dict):
            names = data.get(_NAMES_KEY, {})
            # Keywords may use the variable's name too (REDIS_TIMEOUT=...), and then win.
            fields = {v: f for f, v in cls.VARIABLES.items()}
            data = {
                **{k: v for k, v in data.items() if k not in fields and k != _NAMES_KEY},
                **{fields[k]: v for k, v in data.items() if k in fields},
            }
        try:
            return handler(data)
        except ValidationError as e:
            errors = e.errors()
            for err in errors:
                field = str(err["loc"][0]) if err["loc"] else ""
                if field in cls.VARIABLES:
                    err["loc"] = (names.get(field, cls.VARIABLES[field]), *err["loc"][1:])
                elif err["type"] == "value_error" and names:
                    # A rule between fields spells the plain names: say the ones read.
                    message = str(err["ctx"]["error"])
                    for f, variable in cls.VARIABLES.items():
                        message = re.sub(rf"\b{variable}\b", names.get(f, variable), message)
                    err["ctx"] = {"error": ValueError(message)}
            raise ValidationError.from_exception_data(
                e.title,
                errors,  # type: ignore[arg-type]
                hide_input=True,
            ) from None

    @property
    def keys(self) -> QueueKeys:
        return QueueKeys(
            self.pending_queue_name, self.worker_queue_prefix, self.worker_state_prefix
        )

    @property
    def resolved_redis_url(self) -> str:
        password = self.redis_password.get_secret_value() if self.redis_password else None
        if self.redis_url:
            if password and not self.redis_url.startswith("memory:"):
                return _with_password(self.redis_url, password)
            return self.redis_url
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"
