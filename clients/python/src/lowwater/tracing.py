"""OpenTelemetry tracing for handlers: the producer's trace continues into the handler.

lowwater passes record headers through unchanged, so a W3C ``traceparent`` (and
``tracestate``) that the producer wrote reaches the worker. :func:`traced` wraps a handler so
that each message is handled in a ``process <topic>`` span whose parent is that context, and
is settled in a ``settle <topic>`` span inside it. A ``receive <topic>`` span, also a child of
the producer's context, runs from the moment the worker received the message from the sidecar
to the moment its handler started: the time it waited for a free slot in the worker. Attributes follow the OpenTelemetry
messaging semantic conventions (``messaging.system``, ``messaging.operation.type``,
``messaging.destination.name``, ``messaging.destination.partition.id``,
``messaging.kafka.offset``), with the current names rather than the deprecated ones.

Needs ``opentelemetry-api`` (``pip install 'lowwater[otel]'``); spans go wherever the
application's tracer provider sends them.

Example::

    @traced
    async def send_sms(msg: lowwater.Message) -> None: ...

    lowwater.AsyncWorker(target, send_sms)
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar, overload

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lowwater.message import Message
from lowwater.outcomes import AlreadyProcessed, DeadLetter, Drop, HandlerOutcome, Retry

__all__ = ["traced"]

INSTRUMENTATION: Final = "lowwater"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_CONTEXT_HEADERS: Final = frozenset({"traceparent", "tracestate"})

T = TypeVar("T")


def parent_context(msg: Message) -> Context:
    """The trace context in the message's ``traceparent``/``tracestate`` headers, if any."""
    carrier = {name: value.decode("latin-1") for name, value in msg.headers
               if name in _CONTEXT_HEADERS}
    return _PROPAGATOR.extract(carrier)


def _attributes(msg: Message, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": msg.topic,
        "messaging.destination.partition.id": str(msg.partition),
        "messaging.kafka.offset": msg.offset,
        "lowwater.msg_id": msg.msg_id,
        "lowwater.attempt": msg.attempt,
    }


def _outcome(exc: HandlerOutcome | None) -> str:
    if exc is None:
        return "ack"
    names = {Retry: "retry", DeadLetter: "dead_letter", Drop: "drop",
             AlreadyProcessed: "already_processed"}
    return next((n for kind, n in names.items() if isinstance(exc, kind)), "outcome")


def _settle(tracer: Tracer, msg: Message, exc: HandlerOutcome | None) -> None:
    """Settles ``msg`` as the handler asked, in a ``settle`` span."""
    outcome = _outcome(exc)
    with tracer.start_as_current_span(f"settle {msg.topic}", kind=SpanKind.CLIENT,
                                      attributes={**_attributes(msg, "settle"),
                                                  "lowwater.outcome": outcome}):
        if exc is None:
            msg.ack()
        elif isinstance(exc, Retry):
            msg.retry(exc.delay, exc.reason)
        elif isinstance(exc, DeadLetter):
            msg.dead_letter(exc.reason)
        elif isinstance(exc, Drop):
            msg.drop(exc.reason)
        elif isinstance(exc, AlreadyProcessed):
            msg.already_processed(exc.reason)


def _received(tracer: Tracer, msg: Message, parent: Context) -> None:
    """The ``receive`` span: from the message's arrival from the sidecar until now."""
    waited_ns = int((time.monotonic() - msg._received) * 1e9)
    now_ns = time.time_ns()
    span = tracer.start_span(f"receive {msg.topic}", context=parent, kind=SpanKind.CLIENT,
                             attributes=_attributes(msg, "receive"),
                             start_time=now_ns - max(0, waited_ns))
    span.end(end_time=now_ns)


@contextmanager
def _handling(tracer: Tracer, msg: Message) -> Iterator[None]:
    """The ``receive`` span up to the handler call, the ``process`` span around it, and the
    settlement in its ``settle`` span.

    A HandlerOutcome is settled as it asks and not raised further (an outcome, not an error);
    any other exception is recorded and raised, for the worker to settle with its backoff.
    """
    parent = parent_context(msg)
    _received(tracer, msg, parent)
    with tracer.start_as_current_span(
        f"process {msg.topic}", context=parent, kind=SpanKind.CONSUMER,
        attributes=_attributes(msg, "process"), record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except HandlerOutcome as exc:
            span.set_attribute("lowwater.outcome", _outcome(exc))
            if not msg.settled:
                _settle(tracer, msg, exc)
            return
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        if not msg.settled:
            _settle(tracer, msg, None)


@overload
def traced(handler: Callable[[Message], Awaitable[T]], *,
           tracer_provider: Any = None) -> Callable[[Message], Awaitable[T]]: ...
@overload
def traced(handler: Callable[[Message], T], *,
           tracer_provider: Any = None) -> Callable[[Message], T]: ...


def traced(handler: Callable[[Message], Any], *, tracer_provider: Any = None
           ) -> Callable[[Message], Any]:
    """Wraps a ``def`` or ``async def`` handler in ``receive``, ``process`` and ``settle`` spans.

    Args:
        tracer_provider: where spans go; by default the global one
            (``opentelemetry.trace.set_tracer_provider``).
    """
    tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def run_async(msg: Message) -> Any:
            result = None
            with _handling(tracer, msg):
                result = await handler(msg)
            return result

        return run_async

    @functools.wraps(handler)
    def run(msg: Message) -> Any:
        result = None
        with _handling(tracer, msg):
            result = handler(msg)
        return result

    return run
