"""The asynq wire format: key names, protobuf messages, Lua scripts and the Broker.

Nothing in this package knows about child processes or the agent's lifecycle.
"""

from agent.broker.broker import Broker, DequeuedTask
from agent.broker.errors import (
    BrokerError,
    DuplicateTaskError,
    LeaseLostError,
    QueueNotFoundError,
    TaskIDConflictError,
    TaskNotFoundError,
)
from agent.broker.messages import TaskMessage
from agent.broker.options import EnqueueOptions, EnqueueResult

__all__ = [
    "Broker",
    "BrokerError",
    "DequeuedTask",
    "DuplicateTaskError",
    "EnqueueOptions",
    "EnqueueResult",
    "LeaseLostError",
    "QueueNotFoundError",
    "TaskIDConflictError",
    "TaskMessage",
    "TaskNotFoundError",
]
