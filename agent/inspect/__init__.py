"""Inspection of asynq-format Redis: queue stats, task lists and actions, servers.

``Inspector`` is the library API (synchronous, over ``redis.Redis``); ``cli.inspect_cli``
is the click group mounted as ``rundown-agent inspect`` and runnable as
``python -m agent.inspect``.
"""

from agent.inspect.inspector import (
    DailyStats,
    Inspector,
    InspectorError,
    QueueStats,
    ServerDetails,
    TaskDetails,
    TaskPage,
    WorkerDetails,
)

__all__ = [
    "DailyStats",
    "Inspector",
    "InspectorError",
    "QueueStats",
    "ServerDetails",
    "TaskDetails",
    "TaskPage",
    "WorkerDetails",
]
