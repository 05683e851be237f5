"""The project's Lua scripts, loaded once per client and run with EVALSHA."""

from __future__ import annotations

from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "enqueue",
    "enqueue_unique",
    "schedule",
    "schedule_unique",
    "add_to_group",
    "dequeue",
    "done",
    "mark_complete",
    "requeue",
    "retry",
    "archive",
    "forward",
    "delete_expired_completed",
    "list_lease_expired",
    "write_server_state",
    "clear_server_state",
    "reconcile",
    "done_many",
    "complete_many",
)


@cache
def source(name: str) -> str:
    return resources.files("agent.broker").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """Attribute access to registered scripts: ``scripts.dequeue(keys=..., args=...)``.

    Works for both ``redis.Redis`` and ``redis.asyncio.Redis``: ``register_script``
    returns the matching Script type, which falls back from EVALSHA to EVAL on NOSCRIPT.
    """

    def __init__(self, client) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(source(name)))
