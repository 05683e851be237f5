"""OpenTelemetry spans around handlers, when the agent sends a ``traceparent``.

The agent puts its attempt span's W3C ``traceparent`` (and ``tracestate``) on a request line
only when its own tracing is on. This module imports ``opentelemetry`` only then, and only if
the child's virtualenv has it; without it, or without a ``traceparent``, handlers run as
before. The span uses the process's tracer provider: the one your code installed at import
(``trace.set_tracer_provider``), else one built from the ``OTEL_*`` variables when
``opentelemetry-sdk`` is installed and ``OTEL_TRACES_EXPORTER`` names an exporter
(``provider_from_env``, which the agent uses for itself too).
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # typing is not imported at start (every one_shot task pays for imports)

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_api: Any = None  # opentelemetry.trace once imported; False when it cannot be
_tracer: Any = None
_propagator: Any = None

#: exporter names that mean "no traces" (``OTEL_TRACES_EXPORTER``)
_OFF = {"", "none"}


def exporters_named() -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, or [] when tracing is off by the
    environment (unset, ``none``, or ``OTEL_SDK_DISABLED=true``)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n not in _OFF]


def provider_from_env(names: list[str]) -> Any:
    """A ``TracerProvider`` with a batch processor per exporter in ``names``, found by the
    entry points the exporter packages register (``console`` ships with the SDK, ``otlp``
    with ``opentelemetry-exporter-otlp``); each reads its own ``OTEL_EXPORTER_*``
    variables. The resource reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.
    Raises ``ValueError`` naming an exporter that is not installed."""
    from importlib.metadata import entry_points

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    found = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    provider = TracerProvider(resource=Resource.create())
    for name in names:
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed "
                             f"(installed: {known})")
        provider.add_span_processor(BatchSpanProcessor(found[name].load()()))
    return provider


def _load() -> bool:
    """Import opentelemetry once; install a provider from the environment if the process has
    none. False (for good) when the API is not installed."""
    global _api, _tracer, _propagator
    if _api is None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            _api = False
            return False
        names = exporters_named()
        if names and type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":
            try:
                trace.set_tracer_provider(provider_from_env(names))
            except (ImportError, ValueError) as exc:
                print(f"task_sdk: tracing: {exc}", file=sys.stderr, flush=True)
        _api, _propagator = trace, TraceContextTextMapPropagator()
        _tracer = trace.get_tracer("task_sdk")
    return bool(_api)


def wanted(message: dict[str, Any]) -> bool:
    """True when the request carries a trace context and opentelemetry can be imported."""
    return bool(message.get("traceparent")) and (_api is not False) and _load()


def _start(message: dict[str, Any]) -> Any:
    carrier = {"traceparent": str(message["traceparent"])}
    if message.get("tracestate"):
        carrier["tracestate"] = str(message["tracestate"])
    parent = _propagator.extract(carrier)
    task_type = str(message.get("type") or "")
    return _tracer.start_span(
        f"handle {task_type}", context=parent,
        attributes={"rundown.task.id": str(message.get("task_id") or ""),
                    "rundown.task.type": task_type,
                    "rundown.task.queue": str(message.get("queue") or ""),
                    "rundown.task.retry_count": int(message.get("retry_count") or 0)})


def _finish(span: Any, answer: bytes | None) -> None:
    if answer is not None and b'"error_type":' in answer:
        try:
            fields = json.loads(answer)
        except ValueError:
            fields = {}
        span.set_attribute("rundown.task.error_type", str(fields.get("error_type", "")))
        span.set_attribute("rundown.task.retry", bool(fields.get("retry")))
        span.set_status(_api.Status(_api.StatusCode.ERROR, str(fields.get("error", ""))[:512]))
    span.end()


def run(message: dict[str, Any], handle: Callable[[], bytes | None]) -> bytes | None:
    """``handle()`` (which returns the answer line) inside the task's span."""
    span = _start(message)
    answer = None
    try:
        with _api.use_span(span, end_on_exit=False, record_exception=False):
            answer = handle()
    finally:
        _finish(span, answer)
    return answer


async def run_async(message: dict[str, Any], handle: Callable[[], Any]) -> bytes:
    """``await handle()`` inside the task's span (async handlers; sync ones in threads get
    the span through the copied context)."""
    span = _start(message)
    answer = None
    try:
        with _api.use_span(span, end_on_exit=False, record_exception=False):
            answer = await handle()
    finally:
        _finish(span, answer)
    return answer


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans the provider still holds (a batch processor's queue). A one_shot task
    forked by the zygote ends with ``os._exit``, which runs no ``atexit`` hook: it calls this
    first. Nothing to do when no traced request was seen."""
    if _api:
        force = getattr(_api.get_tracer_provider(), "force_flush", None)
        if force is not None:
            force(timeout_millis)
