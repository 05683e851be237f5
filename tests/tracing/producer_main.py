"""A producer with the SDK's InMemorySpanExporter: enqueues the tasks listed in a JSON file
(``[[type, payload, queue], ...]``) with ``agent.client.Client``, half one at a time and
half with ``enqueue_many``, then writes its spans and the task IDs as JSON lines.

    python producer_main.py REDIS_URL TASKS_JSON SPANS_OUT IDS_OUT
"""

import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.client import Client

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


def main() -> None:
    url, tasks_file, spans_out, ids_out = sys.argv[1:5]
    with open(tasks_file) as src:
        tasks = json.load(src)
    half = len(tasks) // 2
    ids = []
    with Client(url) as client:
        for task_type, payload, queue in tasks[:half]:
            ids.append(client.enqueue(task_type, payload, queue=queue, max_retry=3).id)
        batch = [(t, p, {"queue": q, "max_retry": 3}) for t, p, q in tasks[half:]]
        for info in client.enqueue_many(batch):
            if isinstance(info, Exception):
                raise info
            ids.append(info.id)
    with open(ids_out, "w") as out:
        json.dump(ids, out)
    with open(spans_out, "w") as out:
        for span in exporter.get_finished_spans():
            ctx, parent = span.get_span_context(), span.parent
            out.write(json.dumps({
                "name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None, "kind": span.kind.name,
                "attributes": dict(span.attributes), "status": span.status.status_code.name}) + "\n")


if __name__ == "__main__":
    main()
