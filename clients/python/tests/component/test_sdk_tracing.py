"""lowwater.tracing: a producer's W3C trace continues into the handler, through a worker.

The in-process fake sidecar delivers records with the headers they were published with,
as the real sidecar does; spans go to OpenTelemetry's in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import lowwater
from lowwater.testing import FakeSidecar
from lowwater.tracing import traced

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(finished: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name.startswith(prefix)]


def test_the_handler_span_continues_the_producers_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    seen: list[bytes] = []

    def handle(msg: lowwater.Message) -> None:
        seen.append(msg.value)

    with FakeSidecar() as fake:
        ref = fake.publish(topic="sms.verification", value=b"code-1",
                           headers=[("traceparent", TRACEPARENT), ("tracestate", b"vendor=1")])
        with lowwater.Worker(fake.target, traced(handle, tracer_provider=provider)):
            fake.wait_for_settlements(1)
        assert fake.outcome(ref) == "ACK"
    finished = exporter.get_finished_spans()
    [receive] = named(finished, "receive ")
    [process] = named(finished, "process ")
    [settle] = named(finished, "settle ")
    assert receive.name == "receive sms.verification" and receive.kind is SpanKind.CLIENT
    assert receive.context.trace_id == TRACE_ID
    assert receive.parent is not None and receive.parent.span_id == PARENT_ID
    assert dict(receive.attributes or {})["messaging.operation.type"] == "receive"
    assert receive.start_time is not None and receive.end_time is not None
    assert process.start_time is not None
    assert receive.start_time <= receive.end_time <= process.start_time  # waiting, then handling
    assert process.name == "process sms.verification" and process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == TRACE_ID  # the producer's trace
    assert process.parent is not None and process.parent.span_id == PARENT_ID
    assert process.context.trace_state.get("vendor") == "1"
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "sms.verification"
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["messaging.kafka.offset"] == 0
    assert "messaging.kafka.message.offset" not in attributes  # the deprecated name
    assert settle.parent is not None and settle.parent.span_id == process.context.span_id
    assert settle.kind is SpanKind.CLIENT
    assert dict(settle.attributes or {})["lowwater.outcome"] == "ack"
    assert seen == [b"code-1"]


def test_outcomes_and_failures_are_on_the_spans(
    spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def handle(msg: lowwater.Message) -> None:
        if msg.attempt == 1:
            raise lowwater.Retry(timedelta(milliseconds=10), "gateway 503")
        if msg.attempt == 2:
            raise ConnectionError("provider timed out")

    async def scenario() -> None:
        async with FakeSidecar() as fake:
            ref = fake.publish(topic="sms", value=b"v", headers=[("traceparent", TRACEPARENT)])
            backoff = lowwater.Backoff(initial=timedelta(milliseconds=10),
                                       maximum=timedelta(milliseconds=10))
            async with lowwater.AsyncWorker(fake.target, traced(handle, tracer_provider=provider),
                                            retry_backoff=backoff):
                await fake.wait_until_async(lambda: fake.outcome(ref) == "ACK",
                                            timeout=timedelta(seconds=10),
                                            what="the third attempt's ACK")

    asyncio.run(scenario())
    finished = exporter.get_finished_spans()
    processes = named(finished, "process ")
    assert [dict(s.attributes or {})["lowwater.attempt"] for s in processes] == [1, 2, 3]
    assert all(s.context.trace_id == TRACE_ID for s in processes)
    first, second, third = processes
    assert dict(first.attributes or {})["lowwater.outcome"] == "retry"
    assert first.status.status_code is StatusCode.UNSET  # an outcome, not an error
    assert second.status.status_code is StatusCode.ERROR
    assert [e.name for e in second.events] == ["exception"]
    assert third.status.status_code is StatusCode.UNSET
    outcomes = [dict(s.attributes or {})["lowwater.outcome"] for s in named(finished, "settle ")]
    assert outcomes == ["retry", "ack"]  # the ConnectionError is settled by the worker
