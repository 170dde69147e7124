"""OpenTelemetry traces, after the messaging semantic conventions.

    from affinity_queue.observability.tracing import instrument

    instrument(aq)  # the global tracer provider; instrument(aq, parent=True) to nest the runs

``add``/``add_bulk`` open a PRODUCER span (``send <queue>``) whose context is stored under the
call's request token, which every job id it adds carries; each run opens a CONSUMER span
(``process <queue>``) linked to it (or its child, with ``parent=True``). The only module that
imports ``opentelemetry`` (the ``otel`` extra: the API; the application installs the SDK).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import missing_extra

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(missing_extra("otel", "opentelemetry-api")) from e

if TYPE_CHECKING:
    from ..core import AffinityQueue
    from ..models import JobContext

log = logging.getLogger("affinity_queue.tracing")

SYSTEM = "affinity_queue"
OWN = "messaging.affinity_queue."


@dataclass(slots=True)
class _Producing:
    span: trace.Span
    carrier: dict[str, str] = field(default_factory=dict)

    def added(self, job_ids: list[str]) -> None:
        if len(job_ids) == 1:
            self.span.set_attribute("messaging.message.id", job_ids[0])


class QueueTracing:
    """The :class:`~affinity_queue.observability.TraceRecorder` of one queue."""

    def __init__(self, tracer: trace.Tracer, queue: str, parent: bool) -> None:
        self._tracer = tracer
        self._queue = queue
        self._parent = parent
        self._failing = False

    def _attributes(self, operation: str, kind: str) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.operation.name": operation,
            "messaging.operation.type": kind,
            "messaging.destination.name": self._queue,
        }

    @asynccontextmanager
    async def producing(self, n: int) -> AsyncIterator[_Producing]:
        attributes = self._attributes("send", "send")
        if n != 1:
            attributes["messaging.batch.message_count"] = n
        with self._tracer.start_as_current_span(
            f"send {self._queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            producing = _Producing(span)
            propagate.inject(producing.carrier)
            yield producing

    @asynccontextmanager
    async def consuming(
        self,
        ctx: JobContext,
        type: str,
        carrier: Callable[[], Awaitable[dict[str, str]]],
    ) -> AsyncIterator[trace.Span]:
        try:
            created = trace.get_current_span(propagate.extract(await carrier())).get_span_context()
            self._failing = False
        except Exception as e:  # tracing never fails a job
            if not self._failing:
                log.warning(
                    "queue %s: could not read a job's trace context: %r",
                    self._queue,
                    e,
                    extra={"queue": self._queue},
                )
            self._failing = True
            created = trace.INVALID_SPAN_CONTEXT
        attributes = self._attributes("process", "process")
        attributes |= {
            "messaging.message.id": ctx.job_id,
            OWN + "tag": ctx.identify_tag,
            OWN + "attempt": ctx.attempt,
            OWN + "worker": ctx.worker_id,
            OWN + "type": type,
        }
        links = [Link(created)] if created.is_valid else []
        context = None
        if self._parent and created.is_valid:
            context = trace.set_span_in_context(trace.NonRecordingSpan(created))
        with self._tracer.start_as_current_span(
            f"process {self._queue}",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as e:
                span.set_attribute("error.type", type_name(e))
                span.record_exception(e)
                span.set_status(Status(StatusCode.ERROR, str(e)))
                raise


def type_name(e: BaseException) -> str:
    cls = type(e)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def instrument(
    aq: AffinityQueue,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    parent: bool = False,
) -> None:
    """Trace every queue of ``aq``. ``parent=True`` makes each run a child of the span that
    added its job (one trace from request to run) instead of a linked trace of its own."""
    from .. import __version__

    tracer = trace.get_tracer("affinity_queue", __version__, tracer_provider=tracer_provider)
    aq.instrument(tracing=lambda name: QueueTracing(tracer, name, parent))
