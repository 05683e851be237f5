"""Prometheus families of batched handlers and group aggregation, read at scrape time from
the sample (the pools' ``batches.status()``, the aggregator's ``status()``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def batch_metrics(executors: Mapping[str, Any], aggregation: Mapping[str, Any]) -> Iterable:
    labels = ["queue", "type"]
    waiting = GaugeMetricFamily("rundown_batch_waiting_tasks",
                                "Tasks waiting in a batch being collected, by pool and task type",
                                labels=labels)
    forming = GaugeMetricFamily("rundown_batches_collecting",
                                "Batches being collected (forming, or full and waiting for a slot)",
                                labels=labels)
    age = GaugeMetricFamily("rundown_batch_oldest_age_seconds",
                            "Age of the oldest batch being collected (0: none)", labels=labels)
    sent = CounterMetricFamily("rundown_batches_sent", "Batches sent to a child slot", labels=labels)
    tasks = CounterMetricFamily("rundown_batch_tasks_sent", "Tasks sent in batches", labels=labels)
    split = CounterMetricFamily("rundown_batch_bisections",
                                "Batches split in halves after they crashed their child", labels=labels)
    for queue, info in sorted(executors.items()):
        for task_type, entry in sorted((info.get("batches") or {}).items()):
            key = [queue, task_type]
            waiting.add_metric(key, entry["waiting_tasks"])
            forming.add_metric(key, len(entry["collecting"]))
            age.add_metric(key, entry["oldest_age_seconds"])
            sent.add_metric(key, entry["batches_sent"])
            tasks.add_metric(key, entry["tasks_sent"])
            split.add_metric(key, entry["bisections"])
    yield from (waiting, forming, age, sent, tasks, split)
    groups = CounterMetricFamily("rundown_aggregation_groups",
                                 "Groups aggregated (aggregated tasks enqueued), by queue", labels=["queue"])
    grouped = CounterMetricFamily("rundown_aggregation_tasks",
                                  "Grouped tasks aggregated into them, by queue", labels=["queue"])
    reclaimed = CounterMetricFamily("rundown_aggregation_reclaimed_sets",
                                    "Stale aggregation sets put back into their group (an aggregator "
                                    "died mid-aggregation)", labels=["queue"])
    failed = CounterMetricFamily("rundown_aggregation_failures",
                                 "Aggregations that failed and are tried again", labels=["queue"])
    for queue, entry in sorted(aggregation.items()):
        groups.add_metric([queue], entry["groups_aggregated"])
        grouped.add_metric([queue], entry["tasks_aggregated"])
        reclaimed.add_metric([queue], entry["sets_reclaimed"])
        failed.add_metric([queue], entry["failures"])
    yield from (groups, grouped, reclaimed, failed)
