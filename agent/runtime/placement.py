"""Placement at start: the pool of a deployment placed on the configured GPUs, and the
queues an agent's labels let it take from (agent/config/placement.py has the rules)."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from agent.config import Config
from agent.config.placement import serve_only_labelled
from agent.supervisor.gpus import GpuMemory, GpuPool, detect_gpus
from agent.supervisor.health import Capacity
from agent.supervisor.launch import ChildSpec

log = logging.getLogger("agent.runtime")


@cache
def _detected() -> tuple[int, ...]:
    return tuple(detect_gpus())


_memory: GpuMemory | None = None  # one sampler for every GPU pool of the agent


def gpu_memory() -> GpuMemory | None:
    """The sampler of the GPU pools' memory, None when no pool is placed on GPUs."""
    return _memory


def devices(config: Config) -> list[str]:
    """The configured devices as ``CUDA_VISIBLE_DEVICES`` values (``all``: nvidia-smi -L)."""
    gpus = config.deployment.gpus
    found = _detected() if gpus == "all" else gpus or ()
    return [str(d) for d in found]


def gpu_pool(config: Config, child: ChildSpec, mode: str, capacity: Capacity) -> GpuPool | None:
    """A ``GpuPool`` when ``deployment.gpus`` is set and the deployment runs warm children;
    None otherwise (the caller makes the usual pool)."""
    deployment = config.deployment
    if deployment.gpus is None:
        return None
    if mode != "long_running":
        log.warning("queue %s runs in %s mode: deployment.gpus applies to long_running children "
                    "only, so its processes are not placed on GPUs", child.queue, mode)
        return None
    found = devices(config)
    processes = deployment.processes or len(found) * (deployment.processes_per_gpu or 1)
    log.info("queue %s: %d child process(es) placed on GPU(s) %s, one device each", child.queue,
             processes, ", ".join(found))
    global _memory
    if _memory is None:
        _memory = GpuMemory()
    return GpuPool(child, found, processes, memory=_memory, capacity=capacity,
                   target_slots=config.worker.concurrency)


def labelled_weights(config: Config, weights: dict[str, int]) -> dict[str, int]:
    """Local mode: the queues whose ``requires`` this agent's labels meet (the others were
    reported by the config check, at start and in -validate)."""
    requires = {q.name: q.requires for q in config.worker.queues if q.requires}
    kept, _notes = serve_only_labelled(weights, requires, config.worker.labels)
    return kept


def describe_gpus(pool: Any) -> dict[str, Any] | None:
    """``/status``: the devices of a GPU pool, None for another pool."""
    return pool.gpu_status() if isinstance(pool, GpuPool) else None
