"""A queue's group aggregation (asynq's ``GroupAggregator``, run by the agent)::

    queues:
      - name: notifications
        aggregation:
          grace_period: 10s      # aggregate a group once its newest task is this old (default 1m, >= 1s)
          max_delay: 5m          # ...or once its oldest is this old (0: off, the default)
          max_size: 100          # ...or once it holds this many (0: off, the default)
          aggregate: json_list   # json_list (built in) or child (the code's @aggregate functions)
          task_type: digest      # json_list: the aggregated task's type (default "<type>:aggregated")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .values import Invalid, parse_duration, parse_int, parse_str

AGGREGATION_KEYS = ("grace_period", "max_delay", "max_size", "aggregate", "task_type")
AGGREGATORS = ("json_list", "child")
MAX_GROUP_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class Aggregation:
    """asynq's defaults: a 1 minute grace period, no max delay, no max size."""

    grace_period: float = 60.0
    max_delay: float = 0.0
    max_size: int = 0
    aggregate: str = "json_list"
    task_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The mapping as the control server hands it out (parse_aggregation reads it back)."""
        out: dict[str, Any] = {"grace_period": self.grace_period, "max_delay": self.max_delay,
                               "max_size": self.max_size, "aggregate": self.aggregate}
        if self.task_type is not None:
            out["task_type"] = self.task_type
        return out


def parse_aggregation(value: Any, add: Callable[[str, str], None], where: str) -> Aggregation | None:
    """The ``aggregation`` mapping of a queue; problems go to ``add(path, message)`` with
    their field named, and None is returned."""
    path = f"{where}.aggregation"
    if not isinstance(value, dict):
        add(path, "expected a mapping of " + ", ".join(AGGREGATION_KEYS))
        return None
    ok = True
    for key in value:
        if key not in AGGREGATION_KEYS:
            add(f"{path}.{key}", f"unknown key {str(key)[:40]!r}; expected one of "
                + ", ".join(AGGREGATION_KEYS))
            ok = False
    fields: dict[str, Any] = {}
    parsers: dict[str, Callable[[Any], Any]] = {
        "grace_period": _grace_period,
        "max_delay": lambda v: parse_duration(v, minimum=0.0),
        "max_size": lambda v: parse_int(v, 0, MAX_GROUP_SIZE),
        "aggregate": _aggregator,
        "task_type": _task_type,
    }
    for key, parse in parsers.items():
        if value.get(key) is None:
            continue
        try:
            fields[key] = parse(value[key])
        except Invalid as exc:
            add(f"{path}.{key}", exc.message(value[key]))
            ok = False
    if ok and fields.get("task_type") and fields.get("aggregate") == "child":
        add(f"{path}.task_type", "applies to aggregate: json_list only (with child, the "
            "@aggregate function's into= names the type)")
        ok = False
    return Aggregation(**fields) if ok else None


def _grace_period(value: Any) -> float:
    seconds = parse_duration(value, minimum=0.0)
    if seconds < 1:
        raise Invalid('a duration of at least 1s (asynq\'s minimum), like "10s" or "1m"')
    return seconds


def _aggregator(value: Any) -> str:
    text = parse_str(value) if isinstance(value, str) else None
    if text not in AGGREGATORS:
        raise Invalid(" or ".join(AGGREGATORS))
    return text


def _task_type(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise Invalid("a task type (a non-empty string of at most 256 characters)")
    return value
