"""Prometheus families for GPU placement: the device of each child, and each device's memory
(sampled by ``agent.supervisor.gpus.GpuMemory`` when nvidia-smi is available)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily


def gpu_metrics(executors: Mapping[str, Any]) -> Iterable[GaugeMetricFamily]:
    children = [(queue, child) for queue, info in executors.items()
                for child in info.get("children", []) if child.get("gpu") is not None]
    if not children:
        return
    placed = GaugeMetricFamily("rundown_child_gpu", "1 for each child and the GPU it sees "
                               "(CUDA_VISIBLE_DEVICES)", labels=["queue", "pid", "gpu"])
    for queue, child in children:
        placed.add_metric([queue, str(child.get("pid")), str(child["gpu"])], 1)
    yield placed
    from agent.runtime.placement import gpu_memory

    memory = gpu_memory()
    if memory is None or not memory.devices:
        return
    used = GaugeMetricFamily("rundown_gpu_memory_used_bytes", "GPU memory in use (nvidia-smi)",
                             labels=["gpu"])
    total = GaugeMetricFamily("rundown_gpu_memory_total_bytes", "GPU memory (nvidia-smi)",
                              labels=["gpu"])
    for device, figures in sorted(memory.devices.items()):
        used.add_metric([device], figures["used_bytes"])
        total.add_metric([device], figures["total_bytes"])
    yield used
    yield total
