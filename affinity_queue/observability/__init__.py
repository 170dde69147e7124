"""Observability: Prometheus metrics, OpenTelemetry traces and structured logs, each optional.

The runtime (producers, workers, the scheduler) reports what it does to the recorders installed
on it (:class:`MetricsRecorder`, :class:`TraceRecorder`); with none installed it reports nothing
and pays one ``is None`` test. ``metrics.py`` and ``tracing.py`` implement them and are the only
modules that import ``prometheus_client`` and ``opentelemetry``; ``logs.py`` needs nothing extra.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..models import JobContext


def missing_extra(extra: str, package: str) -> str:
    """The message of the ImportError raised when an optional dependency is not installed."""
    return f"{package} is not installed: pip install 'affinity-queue[{extra}]'"


class MetricsRecorder(Protocol):
    """Per-process counters and histograms of one queue. Never raises into the caller."""

    def enqueued(self, type: str, n: int) -> None: ...

    def started(self, type: str, wait_ms: int) -> None:
        """A job started after waiting ``wait_ms`` (enqueue to start, delay excluded)."""

    def finished(self, type: str, outcome: str, duration_s: float) -> None:
        """``outcome``: completed, failed, retry or cancelled."""

    def handover(self, reason: str) -> None: ...

    def recovered(self, workers: int) -> None: ...

    def term_began(self) -> None: ...

    def fenced(self) -> None: ...


class Producing(Protocol):
    """The producer span of one ``add``: its propagation carrier, and the ids it produced."""

    carrier: dict[str, str]

    def added(self, job_ids: list[str]) -> None: ...


class TraceRecorder(Protocol):
    """Producer and consumer spans of one queue (the OpenTelemetry messaging conventions)."""

    def producing(self, n: int) -> AbstractAsyncContextManager[Producing]:
        """Around an ``add`` of ``n`` tasks: yields the carrier to store with them."""

    def consuming(
        self,
        ctx: JobContext,
        type: str,
        carrier: Callable[[], Awaitable[dict[str, str]]],
    ) -> AbstractAsyncContextManager[Any]:
        """Around one run; ``carrier`` reads the creation context stored with the job."""
