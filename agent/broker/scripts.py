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
    "dequeue_flow",
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


#: Outcome scripts that also exist fenced: ``<name>+fenced`` runs lease_fence.lua first and
#: takes the writer's lease deadline as an extra first argument (see Broker.write_outcome).
FENCED = ("done", "mark_complete", "retry", "archive", "requeue", "done_many", "complete_many")
FENCED_SUFFIX = "+fenced"


#: Scripts that start with the text of others (functions they use).
INCLUDES = {"dequeue_flow": ("flow_message",)}


@cache
def source(name: str) -> str:
    if name.endswith(FENCED_SUFFIX):
        return source("lease_fence") + "\n" + source(name.removesuffix(FENCED_SUFFIX))
    text = resources.files("agent.broker").joinpath("lua", f"{name}.lua").read_text()
    return "\n".join([*(source(part) for part in INCLUDES.get(name, ())), text])


class Scripts:
    """Attribute access to registered scripts: ``scripts.dequeue(keys=..., args=...)``.

    Works for both ``redis.Redis`` and ``redis.asyncio.Redis``: ``register_script``
    returns the matching Script type, which falls back from EVALSHA to EVAL on NOSCRIPT.
    """

    def __init__(self, client) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(source(name)))
        for name in FENCED:
            setattr(self, name + FENCED_SUFFIX, client.register_script(source(name + FENCED_SUFFIX)))


def fenced(call) -> tuple[str, list]:
    """The script name and arguments to send for a ``ScriptCall``: its fenced variant, with the
    deadline as first argument, when ``call.fence`` is set."""
    if getattr(call, "fence", None) is None:
        return call.script, list(call.args)
    return call.script + FENCED_SUFFIX, [call.fence, *call.args]
