"""The capacity model: how many handlers run at once, in how many children, with how much prefetch.

* ``worker.concurrency`` is the number of handlers running at once across all queues.
* A *slot* is a place where a handler can start now: one handler thread of a child for sync
  handlers, one unit of a child's ``async_limit`` for async handlers. A child with any sync
  handler offers ``deployment.threads`` slots; a child whose handlers are all async offers
  ``deployment.async_limit`` slots.
* Children are pooled per deployment. ``deployment.processes: auto`` (None) starts as many as
  ``worker.concurrency`` needs: ``ceil(concurrency / threads)`` for code with sync handlers,
  ``ceil(concurrency / async_limit)`` when every handler is async (known once a child reports
  its handlers).
* Each child may hold up to ``worker.prefetch`` tasks beyond its busy slots.

These functions are pure: the schema uses them to validate, ``-validate`` to print a summary, and
the agent to size its pools.
"""

from __future__ import annotations

from .model import Config

__all__ = [
    "MAX_PREFETCH", "MAX_PROCESSES", "MAX_THREADS", "capacity_summary", "effective_async_limit",
    "children_needed", "plan_children", "planned_children", "slots_per_child",
]

MAX_PROCESSES = 256  #: children of one deployment, explicit or auto
MAX_THREADS = 256  #: sync handler threads per child
MAX_PREFETCH = 1000  #: tasks a child may hold beyond its busy slots


def children_needed(concurrency: int, per_child: int) -> int:
    """``ceil(concurrency / per_child)``: children needed to offer ``concurrency`` slots."""
    return -(-concurrency // per_child)


def plan_children(processes: int | None, *, concurrency: int, threads: int, async_limit: int,
                  all_async: bool) -> int:
    """Children to start: ``processes`` when given, else (auto) as many as ``concurrency`` needs.

    Args:
        processes: an explicit count, or None for auto (a control server's answer may carry one).
        concurrency: handlers running at once across all queues (``worker.concurrency``).
        threads: sync handler threads per child (``deployment.threads``).
        async_limit: async handlers at once per child (``deployment.async_limit``).
        all_async: True when every handler of the code is async (reported by the first child).
    """
    if processes is not None:
        return processes
    return children_needed(concurrency, async_limit if all_async else threads)


def effective_async_limit(config: Config) -> int:
    """``deployment.async_limit``, which defaults to ``worker.concurrency``."""
    return config.deployment.async_limit or config.worker.concurrency


def slots_per_child(config: Config, all_async: bool) -> int:
    """Handlers one child can start at once: ``async_limit`` for async-only code, else ``threads``."""
    return effective_async_limit(config) if all_async else config.deployment.threads


def planned_children(config: Config, all_async: bool) -> int:
    """Children of one deployment under this config (``deployment.processes``, or auto)."""
    return plan_children(config.deployment.processes, concurrency=config.worker.concurrency,
                         threads=config.deployment.threads, async_limit=effective_async_limit(config),
                         all_async=all_async)


def capacity_summary(config: Config) -> str:
    """One line for ``-validate``, e.g. ``capacity: 10 handlers at once (worker.concurrency);
    children: auto = 10 for sync handlers (1 thread each) or 1 if every handler is async
    (async_limit 10); prefetch 0 per child``."""
    dep, concurrency = config.deployment, config.worker.concurrency
    head = f"capacity: {_count(concurrency, 'handler')} at once (worker.concurrency)"
    if dep.mode == "one_shot":
        return f"{head}; children: one_shot, a fresh process per task"
    limit = effective_async_limit(config)
    if dep.processes is None:
        children = (f"auto = {planned_children(config, all_async=False)} for sync handlers "
                    f"({_count(dep.threads, 'thread')} each) or {planned_children(config, all_async=True)} "
                    f"if every handler is async (async_limit {limit})")
    else:
        children = (f"{dep.processes} x {_count(dep.threads, 'thread')} = "
                    f"{_count(dep.processes * dep.threads, 'sync slot')}; async_limit {limit} per child")
    return f"{head}; children: {children}; prefetch {config.worker.prefetch} per child"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
