"""FlowControl: the dequeue calls of queues with flow limits, and what their replies say
about when each queue may give tasks again."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.broker import keys
from agent.broker.plans import LEASE_SECONDS, ScriptCall
from agent.config.flow import FlowLimits

#: Seconds before asking again a queue held by max_running or key_max_running: a slot comes
#: back when a task ends, on any agent (our own tasks' ends ask again at once).
FLOW_POLL = 0.1


def flow_prefix(queue: str) -> str:
    """The prefix of our flow keys of a queue: its hash tag, so they share its Cluster slot."""
    return f"rundown:{{{queue}}}:"


def rate_key(queue: str) -> str:
    return f"rundown:{{{queue}}}:rate"


@dataclass(slots=True)
class Throttle:
    """What the last dequeue of a queue said about its limits."""

    until: float = 0.0  #: monotonic time before which the queue is not asked again
    reason: str = ""  #: rate, type, running, key (the limit that held), or ""
    tokens: int = -1  #: the queue's rate tokens left (-1: no rate)
    running: int = 0  #: the queue's leases across the fleet
    throttled: int = 0  #: fetches a limit cut short (rundown_flow_throttled_fetches_total)


class FlowControl:
    """The limits of the queues that have any, and their throttle state."""

    def __init__(self, limits: Mapping[str, FlowLimits]) -> None:
        self.limits = {q: lim for q, lim in limits.items() if lim}
        self.state: dict[str, Throttle] = {q: Throttle() for q in self.limits}
        self.blocked: dict[str, float] = {}  #: queue -> monotonic time it may be asked again
        self.slot_blocked: set[str] = set()  #: blocked queues a task's end may free (running, key)
        self.throttled_by: dict[tuple[str, str], int] = {}  #: (queue, reason) -> fetches cut short

    def __bool__(self) -> bool:
        return bool(self.limits)

    def call(self, queue: str, now: float, count: int, lease_seconds: int = LEASE_SECONDS) -> ScriptCall:
        lim = self.limits[queue]
        args: list = [int(now) + lease_seconds, keys.task_prefix(queue), count,
                      lim.rate.interval_us if lim.rate else 0, lim.rate.burst if lim.rate else 0,
                      lim.max_running or 0, lim.key_max_running or 0, flow_prefix(queue),
                      1 if lim.lanes else 0]
        for name, type_limit in lim.types.items():
            args += [name, type_limit.rate.interval_us, type_limit.rate.burst]
        return ScriptCall("dequeue_flow", [keys.pending(queue), keys.paused(queue), keys.active(queue),
                                           keys.lease(queue), rate_key(queue)], args)

    def reply(self, queue: str, reply: list, asked: int) -> list:
        """Record what the script said; returns its flat ``id, msg, ...`` part."""
        wait_ms, reason, tokens, running = reply[0], reply[1], reply[2], reply[3]
        if isinstance(reason, bytes):
            reason = reason.decode()
        state = self.state[queue]
        state.tokens, state.running = int(tokens), int(running)
        got = (len(reply) - 4) // 2
        wait_ms = int(wait_ms)
        if wait_ms and reason != "paused":
            state.reason = reason
            if got < asked:
                state.throttled += 1
                counter = (queue, reason)
                self.throttled_by[counter] = self.throttled_by.get(counter, 0) + 1
            delay = FLOW_POLL if wait_ms < 0 else wait_ms / 1000
            state.until = time.monotonic() + delay
            self.blocked[queue] = state.until
            if wait_ms < 0:
                self.slot_blocked.add(queue)
            else:
                self.slot_blocked.discard(queue)
        else:
            state.reason = ""
            state.until = 0.0
            self.blocked.pop(queue, None)
            self.slot_blocked.discard(queue)
        return reply[4:]

    def is_blocked(self, queue: str, now: float) -> bool:
        until = self.blocked.get(queue)
        if until is None:
            return False
        if now >= until:
            del self.blocked[queue]
            self.slot_blocked.discard(queue)
            return False
        return True

    def next_unblock(self) -> float | None:
        """The monotonic time the first held queue may be asked again, if any is held."""
        return min(self.blocked.values()) if self.blocked else None

    def slot_freed(self, queue: str) -> None:
        """One of our tasks of ``queue`` ended: a slot it held is free, ask again now."""
        if queue in self.slot_blocked:
            self.slot_blocked.discard(queue)
            self.blocked.pop(queue, None)
            self.state[queue].until = 0.0

    def status(self, queue: str) -> dict | None:
        """The queue's limits and last seen state, for /status; None without limits."""
        lim = self.limits.get(queue)
        if lim is None:
            return None
        state = self.state[queue]
        now = time.monotonic()
        return {**lim.as_dict(), "tokens": state.tokens if lim.rate else None,
                "running": state.running, "throttled": state.reason if state.until > now else "",
                "throttled_fetches": state.throttled}
