"""A span per attempt of a task in the agent: from its dequeue to its outcome.

The span is a child of the context the producer wrote into the task's headers
(``traceparent``), so every attempt of a task (retries included) is in the producer's trace.
A task enqueued without one gets this attempt's ``traceparent`` written into its headers,
so its retries join the first attempt's trace. Only imported when tracing is on.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agent.broker import DequeuedTask
from agent.tracing import ATTEMPTS, ENQUEUED_AT, TRACEPARENT, TRACESTATE

_propagator = TraceContextTextMapPropagator()


def _queue_wait(task: DequeuedTask) -> float | None:
    """Seconds from the producer's enqueue (first attempt) or from the previous attempt's
    failure (a retry, its backoff included) to this dequeue; None when not known."""
    message = task.message
    if message is None:
        return None
    if message.retried and message.last_failed_at:
        return max(0.0, task.started_at - message.last_failed_at)
    enqueued = message.headers.get(ENQUEUED_AT)
    if not enqueued:
        return None
    try:
        return max(0.0, task.started_at - int(enqueued) / 1000)
    except ValueError:
        return None


class AttemptTracer:
    """Starts a span per dequeued task and ends it at the task's outcome (an ``Observer``
    wrapped around the processor's: ``observing``)."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("rundown-agent")
        self.spans: dict[str, Any] = {}

    def started(self, tasks: list[DequeuedTask]) -> None:
        for task in tasks:
            message = task.message
            headers = message.headers if message is not None else {}
            carrier = {}
            if headers.get(TRACEPARENT):
                carrier[TRACEPARENT] = headers[TRACEPARENT]
                if headers.get(TRACESTATE):
                    carrier[TRACESTATE] = headers[TRACESTATE]
            attributes: dict[str, Any] = {
                "messaging.system": "asynq", "messaging.operation.type": "process",
                "messaging.destination.name": task.queue, "messaging.message.id": task.id,
                "rundown.task.id": task.id, "rundown.task.queue": task.queue}
            if message is not None:
                attributes.update({"rundown.task.type": message.type,
                                   "rundown.task.retry_count": message.retried,
                                   "rundown.task.max_retry": message.retry})
            wait = _queue_wait(task)
            if wait is not None:
                attributes["rundown.task.queue_wait_s"] = round(wait, 6)
            name = f"process {message.type}" if message is not None else "process (malformed)"
            span = self.tracer.start_span(
                name, context=_propagator.extract(carrier), kind=SpanKind.CONSUMER,
                attributes=attributes, start_time=int(task.started_at * 1e9))
            self.spans[task.id] = span
            out: dict[str, str] = {}
            _propagator.inject(out, context=trace.set_span_in_context(span))
            if out.get(TRACEPARENT):
                ATTEMPTS[task.id] = out[TRACEPARENT]
                if message is not None and not headers.get(TRACEPARENT):
                    message.headers[TRACEPARENT] = out[TRACEPARENT]  # retries join this trace

    def ended(self, task: DequeuedTask, state: str, kind: str = "", error: str = "") -> None:
        span = self.spans.pop(task.id, None)
        if span is None:
            return
        ATTEMPTS.pop(task.id, None)
        span.set_attribute("rundown.task.state", state)
        if kind:
            span.set_attribute("rundown.task.outcome", kind)
        if error:
            span.set_status(Status(StatusCode.ERROR, error[:512]))
        elif state in ("dropped", "lease_lost", "error", "not_found"):
            span.set_status(Status(StatusCode.ERROR, state))
        span.end(end_time=time.time_ns())

    def observing(self, inner: Any) -> Any:
        return _TracingObserver(self, inner)


class _TracingObserver:
    """The processor's observer, ending the attempt spans on the way."""

    def __init__(self, tracer: AttemptTracer, inner: Any) -> None:
        self._tracer = tracer
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def task_finished(self, task: DequeuedTask, outcome: Any, state: str, seconds: float) -> None:
        error = "" if outcome.kind == "success" else (outcome.error or outcome.kind)
        self._tracer.ended(task, state, outcome.kind, error if outcome.kind != "requeue" else "")
        self._inner.task_finished(task, outcome, state, seconds)

    def tasks_deleted(self, queue: str, tasks: list[DequeuedTask], seconds: list[float]) -> None:
        for task in tasks:
            self._tracer.ended(task, "deleted", "success")
        self._inner.tasks_deleted(queue, tasks, seconds)

    def task_dropped(self, task: DequeuedTask) -> None:
        self._tracer.ended(task, "dropped")
        self._inner.task_dropped(task)

    def lease_lost(self, task: DequeuedTask) -> None:
        self._tracer.ended(task, "lease_lost")
        self._inner.lease_lost(task)


def attempt_tracer() -> AttemptTracer:
    return AttemptTracer()
