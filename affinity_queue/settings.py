"""QueueSettings: every knob, read from the environment and ``.env`` under the original's names."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import NAME_PATTERN, QueueKeys


class Role(StrEnum):
    SCHEDULER = "SCHEDULER"
    WORKER = "WORKER"
    BOTH = "BOTH"

    @property
    def schedules(self) -> bool:
        return self is not Role.WORKER

    @property
    def works(self) -> bool:
        return self is not Role.SCHEDULER


class RetryOrder(StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"


class TagConcurrency(BaseModel):
    """How many workers may run one tag at once: ``default`` for every tag, ``limits`` per tag."""

    default: int = Field(1, ge=1)
    limits: dict[str, Annotated[int, Field(ge=1)]] = {}

    def for_tag(self, identify_tag: str) -> int:
        return self.limits.get(identify_tag, self.default)


def _env(name: str, *, python_name: str) -> Any:
    # Both the environment's name and the Python field name are accepted as keyword arguments.
    return AliasChoices(name, python_name)


Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern)]


class QueueSettings(BaseSettings):
    """Configuration of one queue. Environment variables win over ``.env``; keywords win over both.

    A bad value raises ``pydantic.ValidationError`` at construction, naming the variable.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,  # REDIS_URL= in a .env file means "not set"
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL", python_name="redis_url"))
    """Overrides REDIS_HOST/PORT/PASSWORD/DB. ``memory://`` runs on an in-process store."""
    redis_host: str = Field(
        "localhost", validation_alias=_env("REDIS_HOST", python_name="redis_host")
    )
    redis_port: int = Field(
        6379, ge=1, le=65535, validation_alias=_env("REDIS_PORT", python_name="redis_port")
    )
    redis_password: SecretStr | None = Field(
        None, validation_alias=_env("REDIS_PASSWORD", python_name="redis_password")
    )
    redis_db: int = Field(0, ge=0, validation_alias=_env("REDIS_DB", python_name="redis_db"))
    redis_timeout_ms: int = Field(
        2000, ge=50, validation_alias=_env("REDIS_TIMEOUT", python_name="redis_timeout_ms")
    )
    """How long one command may take before it fails (a producer then gets
    QueueUnavailableError). Blocking waits get this on top of their own timeout."""
    redis_max_connections: int = Field(
        50,
        ge=2,
        le=10_000,
        validation_alias=_env("REDIS_MAX_CONNECTIONS", python_name="redis_max_connections"),
    )
    """Connections one queue's producers and workers share for commands (one of them is held by
    the subscription behind ``wait_for``). Past it, a command waits for a free one (see
    REDIS_POOL_TIMEOUT) instead of failing. Blocking waits and the scheduler have pools of their
    own, sized from WORKER_COUNT, so they never compete with producers."""
    redis_pool_timeout_ms: int = Field(
        10_000,
        ge=10,
        validation_alias=_env("REDIS_POOL_TIMEOUT", python_name="redis_pool_timeout_ms"),
    )
    """How long a command waits for a free pooled connection before it fails (a producer then
    gets QueueUnavailableError with ``maybe_written`` False): a burst queues, it is not refused."""

    pending_queue_name: Name = Field(
        "pending-tasks",
        validation_alias=_env("PENDING_QUEUE_NAME", python_name="pending_queue_name"),
    )
    worker_queue_prefix: Name = Field(
        "worker-queue",
        validation_alias=_env("WORKER_QUEUE_PREFIX", python_name="worker_queue_prefix"),
    )
    worker_state_prefix: Name = Field(
        "worker-state",
        validation_alias=_env("WORKER_STATE_PREFIX", python_name="worker_state_prefix"),
    )

    max_batch_size: int = Field(
        10, ge=1, le=100_000, validation_alias=_env("MAX_BATCH_SIZE", python_name="max_batch_size")
    )
    worker_count: int = Field(
        1, ge=1, le=1000, validation_alias=_env("WORKER_COUNT", python_name="worker_count")
    )
    scheduler_interval_ms: int = Field(
        1000,
        ge=10,
        validation_alias=_env("SCHEDULER_INTERVAL", python_name="scheduler_interval_ms"),
    )
    app_role: Role = Field(Role.BOTH, validation_alias=_env("APP_ROLE", python_name="app_role"))
    election_lock_ttl_ms: int = Field(
        30_000,
        ge=100,
        validation_alias=_env("ELECTION_LOCK_TTL", python_name="election_lock_ttl_ms"),
    )
    heartbeat_interval_ms: int = Field(
        10_000,
        ge=10,
        validation_alias=_env("HEARTBEAT_INTERVAL", python_name="heartbeat_interval_ms"),
    )
    heartbeat_timeout_ms: int = Field(
        60_000,
        ge=100,
        validation_alias=_env("HEARTBEAT_TIMEOUT", python_name="heartbeat_timeout_ms"),
    )
    identify_tag_concurrency: TagConcurrency = Field(
        TagConcurrency(),
        validation_alias=_env("IDENTIFY_TAG_CONCURRENCY", python_name="identify_tag_concurrency"),
    )
    """A number (every tag), or JSON ``{"default": 1, "tenant-a": 3}``."""
    max_payload_bytes: int = Field(
        1_048_576, ge=1, validation_alias=_env("MAX_PAYLOAD_BYTES", python_name="max_payload_bytes")
    )
    max_attempts: int = Field(
        1, ge=1, le=1000, validation_alias=_env("MAX_ATTEMPTS", python_name="max_attempts")
    )
    """Runs a task gets before it fails for good (1 = no retries); ``add(max_attempts=)`` wins."""
    retry_backoff_ms: int = Field(
        1000, ge=0, validation_alias=_env("RETRY_BACKOFF", python_name="retry_backoff_ms")
    )
    """Base of the exponential backoff: retry n waits a random time up to base * 2**(n-1)."""
    retry_backoff_max_ms: int = Field(
        3_600_000,
        ge=0,
        validation_alias=_env("RETRY_BACKOFF_MAX", python_name="retry_backoff_max_ms"),
    )
    retry_order: RetryOrder = Field(
        RetryOrder.STRICT, validation_alias=_env("RETRY_ORDER", python_name="retry_order")
    )
    """strict: a retrying task keeps its place at the head of its tag and later tasks wait;
    relaxed: the tag goes on and the retry re-enters when due."""
    task_timeout_ms: int = Field(
        0, ge=0, validation_alias=_env("TASK_TIMEOUT", python_name="task_timeout_ms")
    )
    """Default handler timeout (0 = none); per type or per task settings win."""
    keep_completed: int = Field(
        100_000, ge=1, validation_alias=_env("KEEP_COMPLETED", python_name="keep_completed")
    )
    completed_ttl_ms: int = Field(
        86_400_000, ge=1, validation_alias=_env("COMPLETED_TTL", python_name="completed_ttl_ms")
    )
    keep_failed: int = Field(
        100_000, ge=1, validation_alias=_env("KEEP_FAILED", python_name="keep_failed")
    )
    failed_ttl_ms: int = Field(
        604_800_000, ge=1, validation_alias=_env("FAILED_TTL", python_name="failed_ttl_ms")
    )
    max_pending_per_tag: int = Field(
        0, ge=0, validation_alias=_env("MAX_PENDING_PER_TAG", python_name="max_pending_per_tag")
    )
    """Backpressure: ``add`` raises TagBacklogFullError past this many pending tasks of one
    tag (0 = no limit)."""
    shutdown_grace_period_ms: int = Field(
        30_000,
        ge=0,
        validation_alias=_env("SHUTDOWN_GRACE_PERIOD", python_name="shutdown_grace_period_ms"),
    )
    """How long a stopping worker lets its running task finish before cancelling it."""

    @field_validator("app_role", mode="before")
    @classmethod
    def _role_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("retry_order", mode="before")
    @classmethod
    def _order_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("identify_tag_concurrency", mode="before")
    @classmethod
    def _concurrency_shapes(cls, value: Any) -> Any:
        if isinstance(value, int | str) and not isinstance(value, bool):
            return {"default": value}
        if isinstance(value, dict) and "limits" not in value:
            limits = {k: v for k, v in value.items() if k != "default"}
            return {"default": value.get("default", 1), "limits": limits}
        return value

    @model_validator(mode="after")
    def _timings_agree(self) -> Self:
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

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_variables(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # An error names the environment variable (MAX_BATCH_SIZE), however the value was given:
        # keyword arguments would otherwise be reported under the Python name (max_batch_size).
        try:
            return handler(data)
        except ValidationError as e:
            errors = e.errors()
            for err in errors:
                field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
                if field is not None and isinstance(field.validation_alias, AliasChoices):
                    err["loc"] = (str(field.validation_alias.choices[0]), *err["loc"][1:])
            raise ValidationError.from_exception_data(e.title, errors) from None  # type: ignore[arg-type]

    @property
    def keys(self) -> QueueKeys:
        return QueueKeys(
            self.pending_queue_name, self.worker_queue_prefix, self.worker_state_prefix
        )

    @property
    def resolved_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        password = self.redis_password.get_secret_value() if self.redis_password else None
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"
