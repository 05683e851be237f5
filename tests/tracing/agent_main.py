"""``rundown-agent`` with the SDK's InMemorySpanExporter installed: its finished spans are
written as JSON lines to ``AGENT_SPAN_FILE`` when the agent exits."""

import atexit
import json
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


def _dump() -> None:
    with open(os.environ["AGENT_SPAN_FILE"], "w") as out:
        for span in exporter.get_finished_spans():
            ctx, parent = span.get_span_context(), span.parent
            out.write(json.dumps({
                "name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None, "kind": span.kind.name,
                "attributes": dict(span.attributes), "status": span.status.status_code.name,
                "start": span.start_time, "end": span.end_time}) + "\n")


atexit.register(_dump)

if __name__ == "__main__":
    from agent.cli import main

    sys.argv = ["rundown-agent", *sys.argv[1:]]
    main()
