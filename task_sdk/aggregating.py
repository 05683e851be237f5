"""``@aggregate``: the Python side of asynq group aggregation.

Tasks enqueued with ``group=`` (``asynq.Group(...)`` in Go) wait in their group until the
agent's aggregator decides, by asynq's rules (grace period, max delay, max size; configured
per queue), that the group is due. With ``aggregate: child`` it asks one of the queue's
children to turn the group into one task::

    @aggregate("notify")                       # for groups of "notify" tasks
    def digest(group, payloads):               # the group's name, its payloads oldest first
        return {"user": group, "lines": [p["text"] for p in payloads]}

The value returned is the payload of the aggregated task, enqueued to the same queue as a
normal pending task of type ``into`` (default ``"<type>:aggregated"``). The function may be
``async def``. Plain ``@aggregate`` serves every type without its own. A group whose tasks
have different types is aggregated by its oldest task's type.
"""

from __future__ import annotations

from .errors import SkipRetry
from .registry import Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

REQUEST_TYPE = "rundown:aggregate"
"""The task type of the agent's aggregation requests (never stored in Redis)."""
DEFAULT = "*"

_aggregators: dict[str, tuple[Callable[..., Any], str | None]] = {}


def aggregate(arg: Any = None, /, *, into: str | None = None) -> Any:
    """Register a group aggregation function (see the module's docstring)."""
    if callable(arg) and into is None:
        _aggregators[DEFAULT] = (arg, None)
        return arg
    if arg is not None and (not isinstance(arg, str) or not arg):
        raise TypeError(f"@aggregate takes the grouped tasks' type as a non-empty string, got {arg!r}")
    if into is not None and (not isinstance(into, str) or not into.strip()):
        raise ValueError(f"@aggregate(into=...) must be a non-empty task type, got {into!r}")

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@aggregate must decorate a function, got {type(func).__name__}")
        _aggregators[arg or DEFAULT] = (func, into)
        return func

    return decorate


def _run(request: Any) -> Any:
    """The handler of an aggregation request: ``{"group", "type", "payloads"}`` in,
    ``{"type", "payload"}`` out (an awaitable of it for an async function)."""
    if not isinstance(request, dict) or not isinstance(request.get("payloads"), list):
        raise SkipRetry("BadAggregationRequest: expected {group, type, payloads}")
    task_type = str(request.get("type") or "")
    found = _aggregators.get(task_type) or _aggregators.get(DEFAULT)
    if found is None:
        served = ", ".join(sorted(_aggregators)) or "nothing"
        raise SkipRetry(f"no @aggregate function for tasks of type {task_type!r}; this child "
                        f"aggregates: {served}")
    func, into = found
    into = into or f"{task_type}:aggregated"
    value = func(str(request.get("group") or ""), request["payloads"])
    if hasattr(value, "__await__"):
        return _finish(value, into)
    return {"type": into, "payload": value}


async def _finish(awaitable: Any, into: str) -> Any:
    return {"type": into, "payload": await awaitable}


def handler() -> Handler | None:
    """The built-in handler for aggregation requests, once an ``@aggregate`` exists."""
    return _HANDLER if _aggregators else None


_HANDLER = Handler(name=REQUEST_TYPE, func=_run, is_async=False, ctx_mode="none")


def clear() -> None:
    _aggregators.clear()
