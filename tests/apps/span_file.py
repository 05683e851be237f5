"""A tracer provider for the tracing tests' task code: spans go to a JSON-lines file
(``SPAN_FILE``), one ``write`` per span on an O_APPEND descriptor, so every child appends to
the same file. ``tracer`` is None when ``SPAN_FILE`` is not set."""

import json
import os

if os.environ.get("SPAN_FILE"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

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
    # SPAN_BATCH=1: the SDK's batch processor (spans held until exported in the background)
    processor = BatchSpanProcessor if os.environ.get("SPAN_BATCH") else SimpleSpanProcessor
    trace.get_tracer_provider().add_span_processor(processor(_JsonLines(os.environ["SPAN_FILE"])))
    tracer = trace.get_tracer("traced_worker")
else:
    tracer = None


