"""Prometheus metrics, fed by the processor's Observer hooks and sampled collectors."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agent.broker import DequeuedTask
from agent.ops.batch_metrics import batch_metrics
from agent.ops.gpu_metrics import gpu_metrics
from agent.runtime.processor import Observer
from agent.supervisor.outcome import Outcome

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics(Observer):
    """Counters and histograms of the hot path.

    The processor calls these hooks for every task, so they only add to plain dicts (the
    agent's event loop is their only writer); ``HotPathCollector`` turns them into
    Prometheus families at scrape time. prometheus-client's own metric objects take a lock
    and walk label maps on every update, several microseconds per task.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.tasks: Counter[tuple[str, str, str]] = Counter()  # (queue, type, state)
        self.failures: Counter[tuple[str, str]] = Counter()  # (queue, type)
        self.durations: dict[str, DurationHistogram] = {}
        self.in_flight: Counter[str] = Counter()
        self.dequeued_tasks: Counter[str] = Counter()
        self.lease_lost_tasks: Counter[str] = Counter()
        self.redis_errors: Counter[str] = Counter()
        self.registry.register(HotPathCollector(self))

    # Observer hooks -------------------------------------------------------------------

    def task_finished(self, task: DequeuedTask, outcome: Outcome, state: str, seconds: float) -> None:
        queue = task.queue
        task_type = task.message.type if task.message else ""
        self.in_flight[queue] -= 1
        self.tasks[queue, task_type, state] += 1
        if outcome.kind in ("retry", "archive"):
            self.failures[queue, task_type] += 1
        self._durations(queue).observe(seconds)

    def tasks_started(self, queue: str, count: int) -> None:
        self.in_flight[queue] += count

    def tasks_deleted(self, queue: str, tasks: list[DequeuedTask], seconds: list[float]) -> None:
        """``task_finished`` with a success outcome and state "deleted", for a batch of one
        queue's tasks (the hot path's common end)."""
        self.in_flight[queue] -= len(tasks)
        counts = self.tasks
        for task in tasks:
            counts[queue, task.message.type if task.message else "", "deleted"] += 1
        self._durations(queue).observe_many(seconds)

    def _durations(self, queue: str) -> DurationHistogram:
        histogram = self.durations.get(queue)
        if histogram is None:
            histogram = self.durations[queue] = DurationHistogram(DURATION_BUCKETS)
        return histogram

    def task_dropped(self, task: DequeuedTask) -> None:
        """A task left without an outcome (requeued at shutdown, cancelled, lease lost)."""
        self.in_flight[task.queue] -= 1

    def lease_lost(self, task: DequeuedTask) -> None:
        self.lease_lost_tasks[task.queue] += 1

    def redis_error(self, where: str, exc: BaseException) -> None:
        self.redis_errors[where] += 1

    def dequeued(self, queue: str, count: int) -> None:
        self.dequeued_tasks[queue] += count


class DurationHistogram:
    """A Prometheus histogram as plain numbers: a count per bucket (upper bounds inclusive,
    as Prometheus's ``le``), the last one +Inf, and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: list[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self.sum += sum(values)

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class HotPathCollector(Collector):
    """The ``Metrics`` dicts as Prometheus families, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable:
        m = self.metrics
        yield _counter("rundown_tasks", "Tasks finished, by queue, type and resulting state "
                       "(completed, deleted = success without retention, retry, archived, "
                       "pending = requeued, lease_lost, not_found)", ["queue", "type", "state"], m.tasks)
        yield _counter("rundown_task_failures", "Tasks whose run failed (retried or archived)",
                       ["queue", "type"], m.failures)
        duration = HistogramMetricFamily("rundown_task_duration_seconds",
                                         "Time from dequeue to outcome written", labels=["queue"])
        for queue, histogram in sorted(m.durations.items()):
            duration.add_metric([queue], histogram.cumulative(), histogram.sum)
        yield duration
        in_flight = GaugeMetricFamily("rundown_tasks_in_flight", "Tasks being processed", labels=["queue"])
        for queue, count in sorted(m.in_flight.items()):
            in_flight.add_metric([queue], count)
        yield in_flight
        yield _counter("rundown_dequeued_tasks", "Tasks taken from pending", ["queue"], m.dequeued_tasks)
        yield _counter("rundown_lease_lost_tasks", "Tasks whose lease was lost before the outcome "
                       "could be written", ["queue"], m.lease_lost_tasks)
        yield _counter("rundown_redis_errors", "Redis errors, by operation", ["operation"], m.redis_errors)


def _counter(name: str, documentation: str, labels: list[str], counts: Counter) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(counts.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


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
        yield from gpu_metrics(data.get("executors", {}))
        yield from batch_metrics(data.get("executors", {}), data.get("aggregation", {}))
        leases = data.get("leases", {})
        yield CounterMetricFamily("rundown_lease_extensions", "Lease renewals written",
                                  value=leases.get("extensions", 0))
        yield GaugeMetricFamily("rundown_agent_rss_bytes", "Resident memory of the agent process",
                                value=data.get("rss", 0))
        yield GaugeMetricFamily("rundown_ready", "1 when the agent is ready to take tasks",
                                value=1 if data.get("ready") else 0)
        yield GaugeMetricFamily("rundown_handlers_running",
                                "Handlers running now (worker.concurrency bounds it)",
                                value=data.get("running", 0))
        yield from _flow_metrics(data.get("flow"))
        yield GaugeMetricFamily("rundown_handler_slots",
                                "Handlers that can run at once (min of concurrency and slots)",
                                value=data.get("slots", 0))


def _flow_metrics(flow) -> Iterable:
    """The queues with flow limits: fetches a limit cut short, rate tokens, running count."""
    throttled = CounterMetricFamily("rundown_flow_throttled_fetches",
                                    "Dequeues of a queue that a flow limit cut short, by the limit "
                                    "(rate, type, running, key)", labels=["queue", "limit"])
    tokens = GaugeMetricFamily("rundown_flow_tokens", "Rate tokens a queue had at its last dequeue",
                               labels=["queue"])
    running = GaugeMetricFamily("rundown_flow_running",
                                "Tasks of a queue with max_running or key limits holding a lease, "
                                "fleet-wide, at its last dequeue", labels=["queue"])
    if flow:
        for (queue, reason), count in sorted(flow.throttled_by.items()):
            throttled.add_metric([queue, reason], count)
        for queue, state in sorted(flow.state.items()):
            if state.tokens >= 0:
                tokens.add_metric([queue], state.tokens)
            running.add_metric([queue], state.running)
    yield throttled
    yield tokens
    yield running
