"""OpenTelemetry: request span -> send (PRODUCER) -> process (CONSUMER), linked or nested."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from affinity_queue import AffinityQueue, JobContext, QueueSettings, Task
from affinity_queue.observability.tracing import instrument

from ..support import drained, wait_for


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


@pytest.mark.parametrize("parent", [False, True])
async def test_a_request_span_leads_to_the_run(
    make_settings: Callable[..., QueueSettings],
    spans: tuple[TracerProvider, InMemorySpanExporter],
    parent: bool,
) -> None:
    provider, exporter = spans
    aq = AffinityQueue(make_settings())
    instrument(aq, tracer_provider=provider, parent=parent)

    @aq.handler("mail")
    async def mail(payload: None, ctx: JobContext) -> None:
        if ctx.identify_tag == "bad":
            raise ConnectionError("smtp down")

    async with aq:
        q = aq.queue()
        with provider.get_tracer("app").start_as_current_span("POST /tasks") as request:
            job = await q.add(Task(type="mail", identify_tag="acme"))
        failed = await q.add(Task(type="mail", identify_tag="bad"))
        await q.add_bulk([Task(type="mail", identify_tag="acme") for _ in range(3)])
        await drained(q, 5)
        await wait_for(
            lambda: _count(exporter, "process"), lambda n: n == 5, what="five process spans"
        )
    (send,) = [
        s for s in named(exporter, "send") if s.attributes.get("messaging.message.id") == job.id
    ]  # type: ignore[index]
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes["messaging.system"] == "affinity_queue"  # type: ignore[index]
    assert send.attributes["messaging.operation.type"] == "send"  # type: ignore[index]
    assert send.attributes["messaging.destination.name"] == "default"  # type: ignore[index]
    (bulk,) = [
        s for s in named(exporter, "send") if "messaging.batch.message_count" in s.attributes
    ]  # type: ignore[operator]
    assert bulk.attributes["messaging.batch.message_count"] == 3  # type: ignore[index]

    runs = {s.attributes["messaging.message.id"]: s for s in named(exporter, "process")}  # type: ignore[index]
    run = runs[job.id]
    assert run.kind is SpanKind.CONSUMER
    assert run.attributes["messaging.operation.name"] == "process"  # type: ignore[index]
    assert run.attributes["messaging.affinity_queue.tag"] == "acme"  # type: ignore[index]
    assert run.attributes["messaging.affinity_queue.attempt"] == 1  # type: ignore[index]
    assert run.attributes["messaging.affinity_queue.worker"]  # type: ignore[index]
    assert [link.context.span_id for link in run.links] == [send.context.span_id]  # type: ignore[union-attr]
    if parent:
        assert run.parent is not None and run.parent.span_id == send.context.span_id  # type: ignore[union-attr]
        assert run.context.trace_id == request.get_span_context().trace_id  # type: ignore[union-attr]
    else:
        assert run.parent is None
    bad = runs[failed.id]
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.attributes["error.type"] == "ConnectionError"  # type: ignore[index]


async def _count(exporter: InMemorySpanExporter, prefix: str) -> int:
    return len(named(exporter, prefix))


async def test_tracing_off_stores_nothing(
    make_settings: Callable[..., QueueSettings], redis_client: object
) -> None:
    aq = AffinityQueue(make_settings())
    async with aq:
        job = await aq.queue().add(Task(type="x", identify_tag="a"))
        key = aq.settings().keys.trace(job.id.partition("-")[2])
        assert not await aq.queue()._redis.exists(key)
