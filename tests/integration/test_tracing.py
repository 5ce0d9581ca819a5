"""A producer's W3C trace continues through Kafka (Tansu) and a real sidecar into the handler:
the record's ``traceparent`` header travels unchanged, and ``lowwater.tracing.traced`` makes
the handler's ``receive``, ``process`` and ``settle`` spans part of the producer's trace."""

from __future__ import annotations

import asyncio

from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import lowwater
from coordinator.embedded import SidecarProcess
from lowwater.tracing import traced
from tests.integration.workload import Budget, logs_on_failure
from tests.support.aio import async_test
from tests.support.broker import OutRecord, TopicFactory, produce, unique_name


@async_test
async def test_a_producers_trace_continues_through_the_sidecar_into_the_handler(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    budget = Budget()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    topic = new_topic(1)
    tracer = provider.get_tracer("sms-api")
    with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as send:
        carrier: dict[str, str] = {}
        inject(carrier)  # W3C traceparent of the current (producer) span
        produce(kafka_bootstrap, topic, [OutRecord(
            b"code-1", headers=[(k, v.encode()) for k, v in carrier.items()])])
    handled = asyncio.Event()

    async def handle(msg: lowwater.Message) -> None:
        handled.set()

    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic])
    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target,
                                            traced(handle, tracer_provider=provider)):
                await asyncio.wait_for(handled.wait(), budget.left(60))
            assert sidecar.stop() == 0
        finally:
            sidecar.kill()
            provider.shutdown()
    spans = {s.name.split(" ")[0]: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"send", "receive", "process", "settle"}
    producer = send.get_span_context()
    for name in ("receive", "process"):
        span = spans[name]
        assert span.context.trace_id == producer.trace_id, name
        assert span.parent is not None and span.parent.span_id == producer.span_id, name
        assert dict(span.attributes or {})["messaging.destination.name"] == topic
    settle = spans["settle"]
    assert settle.parent is not None and settle.parent.span_id == spans["process"].context.span_id
    assert dict(settle.attributes or {})["lowwater.outcome"] == "ack"
