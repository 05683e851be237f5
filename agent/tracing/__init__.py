"""OpenTelemetry tracing, an optional extra (``pip install rundown-agent[otel]``).

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (docs/tracing.md). This package
imports ``opentelemetry`` only when tracing is on: with it off, the agent does no per-task
work for tracing (the processor checks one attribute per fetch, ``TaskRequest`` one empty
dict per task).

* ``producer``: the enqueue span, and W3C ``traceparent`` / ``tracestate`` written into the
  task's asynq headers (Python clients, HTTP enqueue).
* ``attempts``: a span per attempt in the agent (dequeue to outcome), a child of the
  producer's context; its ``traceparent`` goes to the child on the request line.
"""

from __future__ import annotations

import logging

from task_sdk.tracing import exporters_named

log = logging.getLogger("agent.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
ENQUEUED_AT = "rundown-enqueued-at"  #: header: the producer's enqueue time, Unix milliseconds

#: task ID -> the ``traceparent`` of its running attempt's span (empty while tracing is off)
ATTEMPTS: dict[str, str] = {}

_ready: bool | None = None  # the provider check's answer, once made


def enabled() -> bool:
    """Tracing is on by the environment: ``OTEL_TRACES_EXPORTER`` names an exporter (not
    ``none``) and ``OTEL_SDK_DISABLED`` is not ``true``."""
    return bool(exporters_named())


def setup() -> bool:
    """True when tracing is on and can run: a tracer provider is installed (the embedding
    program's own, else one built once from the ``OTEL_*`` variables). False, with one
    warning, when it is on but the ``otel`` extra is missing or an exporter named is not
    installed."""
    global _ready
    names = exporters_named()
    if not names:
        return False
    if _ready is None:
        _ready = _install(names)
    return _ready


def _install(names: list[str]) -> bool:
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but opentelemetry is not installed "
                    "(pip install 'rundown-agent[otel]'): tracing stays off")
        return False
    if type(trace.get_tracer_provider()).__name__ != "ProxyTracerProvider":
        return True  # the embedding program installed its own
    from task_sdk.tracing import provider_from_env

    try:
        trace.set_tracer_provider(provider_from_env(names))
    except (ImportError, ValueError) as exc:
        log.warning("tracing stays off: %s", exc)
        return False
    return True
