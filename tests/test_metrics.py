"""The hot-path metrics (plain dicts, rendered at scrape time) read exactly as
prometheus-client's own metric objects fed the same observations would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent.broker import DequeuedTask
from agent.broker.messages import TaskMessage
from agent.ops.metrics import DURATION_BUCKETS, Metrics
from agent.supervisor.outcome import Outcome


def _task(queue: str, task_type: str) -> DequeuedTask:
    return DequeuedTask("id", queue, b"", TaskMessage(id="id", queue=queue, type=task_type), 0)


def _lines(registry: CollectorRegistry) -> set[str]:
    text = generate_latest(registry).decode()
    return {_rounded(line) for line in text.splitlines() if line and not line.startswith("#")
            and "_created" not in line}


def _rounded(line: str) -> str:
    """Sums to 9 significant digits: batched observations add up in another order."""
    name, _, value = line.rpartition(" ")
    return f"{name} {float(value):.9g}" if "_sum{" in name else line


def test_hot_path_metrics_match_prometheus_client():
    metrics = Metrics()
    reference = CollectorRegistry()
    tasks = Counter("rundown_tasks", "", ["queue", "type", "state"], registry=reference)
    failures = Counter("rundown_task_failures", "", ["queue", "type"], registry=reference)
    duration = Histogram("rundown_task_duration_seconds", "", ["queue"], buckets=DURATION_BUCKETS,
                         registry=reference)
    in_flight = Gauge("rundown_tasks_in_flight", "", ["queue"], registry=reference)
    rng = random.Random(7)
    batches: dict[str, tuple[list, list]] = {"a": ([], []), "b": ([], [])}
    for _ in range(2000):
        queue, task_type = rng.choice(["a", "b"]), rng.choice(["x", "y", ""])
        task = _task(queue, task_type)
        metrics.tasks_started(queue, 1)
        in_flight.labels(queue).inc()
        if rng.random() < 0.1:
            continue  # still in flight
        kind, state = rng.choice([("success", "deleted"), ("retry", "retry"), ("archive", "archived")])
        # bucket edges exactly, and values in between
        seconds = rng.choice([*DURATION_BUCKETS, rng.random() * 2, rng.random() * 5000])
        if state == "deleted" and rng.random() < 0.5:  # the hot path reports these in batches
            batches[queue][0].append(task)
            batches[queue][1].append(seconds)
        else:
            metrics.task_finished(task, Outcome(kind), state, seconds)
        in_flight.labels(queue).dec()
        tasks.labels(queue, task_type, state).inc()
        if kind != "success":
            failures.labels(queue, task_type).inc()
        duration.labels(queue).observe(seconds)
    for queue, (batch, seconds_list) in batches.items():
        metrics.tasks_deleted(queue, batch, seconds_list)
    ours = _lines(metrics.registry)
    theirs = _lines(reference)
    assert theirs and theirs <= ours, sorted(theirs - ours)[:5]


def test_counters_of_errors_dequeues_and_lost_leases():
    metrics = Metrics()
    metrics.redis_error("dequeue", OSError())
    metrics.dequeued("q", 5)
    metrics.dequeued("q", 2)
    metrics.lease_lost(_task("q", "t"))
    text = _lines(metrics.registry)
    assert 'rundown_redis_errors_total{operation="dequeue"} 1.0' in text
    assert 'rundown_dequeued_tasks_total{queue="q"} 7.0' in text
    assert 'rundown_lease_lost_tasks_total{queue="q"} 1.0' in text
