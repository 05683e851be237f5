"""Prometheus metrics, fed by the processor's Observer hooks and sampled collectors."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.broker import DequeuedTask
from agent.runtime.outcome import Outcome
from agent.runtime.processor import Observer

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics(Observer):
    """Counters and histograms updated on the hot path (label children are cached)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks = Counter("rundown_tasks", "Tasks finished, by queue, type and resulting state "
                             "(completed, deleted = success without retention, retry, archived, "
                             "pending = requeued, lease_lost, not_found)",
                             ["queue", "type", "state"], registry=r)
        self.failures = Counter("rundown_task_failures", "Tasks whose run failed (retried or archived)",
                                ["queue", "type"], registry=r)
        self.duration = Histogram("rundown_task_duration_seconds", "Time from dequeue to outcome written",
                                  ["queue"], buckets=DURATION_BUCKETS, registry=r)
        self.in_flight_tasks = Gauge("rundown_tasks_in_flight", "Tasks being processed", ["queue"], registry=r)
        self.dequeued_tasks = Counter("rundown_dequeued_tasks", "Tasks taken from pending", ["queue"], registry=r)
        self.lease_lost_tasks = Counter("rundown_lease_lost_tasks", "Tasks whose lease was lost before the "
                                    "outcome could be written", ["queue"], registry=r)
        self.redis_error_count = Counter("rundown_redis_errors", "Redis errors, by operation", ["operation"],
                                    registry=r)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # Observer hooks -------------------------------------------------------------------

    def task_started(self, task: DequeuedTask) -> None:
        self._child(self.in_flight_tasks, task.queue).inc()

    def task_finished(self, task: DequeuedTask, outcome: Outcome, state: str, seconds: float) -> None:
        task_type = task.message.type if task.message else ""
        self._child(self.in_flight_tasks, task.queue).dec()
        self._child(self.tasks, task.queue, task_type, state).inc()
        if outcome.kind in ("retry", "archive"):
            self._child(self.failures, task.queue, task_type).inc()
        self._child(self.duration, task.queue).observe(seconds)

    def task_dropped(self, task: DequeuedTask) -> None:
        """A task left without an outcome (requeued at shutdown, cancelled, lease lost)."""
        self._child(self.in_flight_tasks, task.queue).dec()

    def lease_lost(self, task: DequeuedTask) -> None:
        self._child(self.lease_lost_tasks, task.queue).inc()

    def redis_error(self, where: str, exc: BaseException) -> None:
        self._child(self.redis_error_count, where).inc()

    def dequeued(self, queue: str, count: int) -> None:
        self._child(self.dequeued_tasks, queue).inc(count)


class SampledCollector(Collector):
    """Values read at scrape time from the running agent (no cost on the hot path)."""

    def __init__(self, sample: Callable[[], dict]) -> None:
        self.sample = sample

    def collect(self) -> Iterable:
        data = self.sample()
        depth = GaugeMetricFamily("rundown_queue_tasks", "Tasks in each queue by state (sampled)",
                                  labels=["queue", "state"])
        latency = GaugeMetricFamily("rundown_queue_latency_seconds",
                                    "Age of the oldest pending task (sampled)", labels=["queue"])
        for queue, states in data.get("queues", {}).items():
            for state, count in states.get("counts", {}).items():
                depth.add_metric([queue, state], count)
            latency.add_metric([queue], states.get("latency", 0.0))
        yield depth
        yield latency
        rss = GaugeMetricFamily("rundown_child_rss_bytes", "Resident memory of each child",
                                labels=["queue", "pid"])
        restarts = CounterMetricFamily("rundown_child_restarts", "Child processes restarted",
                                       labels=["queue"])
        for queue, info in data.get("executors", {}).items():
            for child in info.get("children", []):
                if child.get("pid") and child.get("rss") is not None:
                    rss.add_metric([queue, str(child["pid"])], child["rss"])
            restarts.add_metric([queue], info.get("restarts", 0))
        yield rss
        yield restarts
        leases = data.get("leases", {})
        yield CounterMetricFamily("rundown_lease_extensions", "Lease renewals written",
                                  value=leases.get("extensions", 0))
        yield GaugeMetricFamily("rundown_agent_rss_bytes", "Resident memory of the agent process",
                                value=data.get("rss", 0))
        yield GaugeMetricFamily("rundown_ready", "1 when the agent is ready to take tasks",
                                value=1 if data.get("ready") else 0)
