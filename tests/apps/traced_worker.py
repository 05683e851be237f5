"""Task code for the tracing tests: its spans go to a JSON-lines file (``SPAN_FILE``), one
``write`` per span on an O_APPEND descriptor, so every child appends to the same file."""

import json
import os
import time

from task_sdk import RetryAfter, current_task, run, task

if os.environ.get("SPAN_FILE"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class _JsonLines(SpanExporter):
        def __init__(self, path: str) -> None:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def export(self, spans):
            for span in spans:
                ctx, parent = span.get_span_context(), span.parent
                line = {"name": span.name, "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": f"{parent.span_id:016x}" if parent else None,
                        "attributes": dict(span.attributes), "status": span.status.status_code.name,
                        "pid": os.getpid()}
                os.write(self.fd, (json.dumps(line) + "\n").encode())
            return SpanExportResult.SUCCESS

    trace.set_tracer_provider(TracerProvider())
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(_JsonLines(os.environ["SPAN_FILE"])))
    _tracer = trace.get_tracer("traced_worker")
else:
    _tracer = None


def _inner_span():
    """A span the handler makes itself: it must nest under the SDK's handler span."""
    if _tracer is not None:
        with _tracer.start_as_current_span("user work"):
            pass


@task("traced:ok")
def ok(payload):
    _inner_span()
    return {"n": payload.get("n")}


@task("traced:flaky")
def flaky(payload):
    """Fails its first attempt, succeeds on the next."""
    _inner_span()
    if current_task().retry_count == 0:
        raise RetryAfter(0, "first attempt fails on purpose")
    return {"n": payload.get("n")}


@task("traced:crash")
def crash(payload):
    """Its first attempt kills its own child in the middle of the handler (no span of it can
    be exported); the retry succeeds."""
    _inner_span()
    if current_task().retry_count == 0:
        os._exit(17)
    return {"n": payload.get("n")}


@task("traced:slow")
def slow(payload):
    _inner_span()
    time.sleep(float(payload.get("seconds", 0.2)))
    return {"n": payload.get("n")}


if __name__ == "__main__":
    run()
