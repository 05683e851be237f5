"""The producer's side: an enqueue span, and its W3C context written into the task's asynq
headers (``traceparent``, ``tracestate`` when present, and ``rundown-enqueued-at``).

Used by ``agent.client`` and the HTTP enqueue. Without ``opentelemetry`` installed this does
nothing. With the API alone (no SDK provider), the enqueue span is a no-op that carries the
caller's current context: a caller inside a trace still gets its ``traceparent`` written.
Headers that already hold a ``traceparent`` (the caller chose the trace) are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from agent.tracing import ENQUEUED_AT, TRACEPARENT

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed
    trace = None

_propagator = TraceContextTextMapPropagator() if trace is not None else None


def available() -> bool:
    return trace is not None


def start(task_type: str, queue: str, headers: dict[str, str],
          parent_carrier: Mapping[str, str] | None = None) -> Any:
    """Start the enqueue span of one task and write its context into ``headers``; returns the
    span to end once the enqueue call answered (None when nothing was started).

    ``parent_carrier``: W3C headers of an incoming request (HTTP enqueue), used as the parent
    when the current context holds no span."""
    if trace is None or headers.get(TRACEPARENT):
        return None
    parent = None
    if parent_carrier and not trace.get_current_span().get_span_context().is_valid:
        parent = _propagator.extract(parent_carrier)
    span = trace.get_tracer("rundown-agent").start_span(
        f"enqueue {task_type}", context=parent, kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "asynq", "messaging.operation.type": "send",
                    "messaging.destination.name": queue, "rundown.task.type": task_type,
                    "rundown.task.queue": queue})
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span, parent or otel_context.get_current()))
    if carrier.get(TRACEPARENT):
        headers.update(carrier)
        headers[ENQUEUED_AT] = str(time.time_ns() // 1_000_000)
    return span


def finish(span: Any, task_id: str | None = None, error: BaseException | None = None) -> None:
    """End an enqueue span: with the task's ID, or the error the enqueue raised."""
    if span is None:
        return
    if task_id:
        span.set_attribute("messaging.message.id", task_id)
        span.set_attribute("rundown.task.id", task_id)
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def start_for_options(task_type: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``start`` for a client's enqueue options: returns the span and the options with the
    headers written (a copy; the caller's dict and headers are not changed)."""
    if trace is None:
        return None, options
    headers = dict(options.get("headers") or {})
    span = start(task_type, str(options.get("queue") or "default"), headers)
    if span is None:
        return None, options
    return span, {**options, "headers": headers}


_server_ready: bool | None = None


def start_for_request(task_type: str, queue: str, headers: dict[str, str],
                      request_headers: Mapping[str, str]) -> Any:
    """``start`` for an HTTP enqueue: the incoming request's ``traceparent`` is the parent
    (unless an instrumented server already made its span current). The first call installs
    the server's tracer provider from ``OTEL_*`` when tracing is on (``agent.tracing.setup``)."""
    global _server_ready
    if trace is None:
        return None
    if _server_ready is None:
        from agent.tracing import setup

        _server_ready = setup()
    return start(task_type, queue, headers, request_headers)
