"""Lifecycle states of the agent and the asynq status each maps to in the heartbeat."""

from __future__ import annotations

import enum
import logging
import time

log = logging.getLogger("agent.runtime")


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    PAUSED = "paused"  # SIGTSTP or an ops "drain": alive, takes no new tasks
    DRAINING = "draining"
    STOPPED = "stopped"


# asynq.Server writes "new", "active", "stopped" (no new tasks) and "closed".
ASYNQ_STATUS = {
    State.STARTING: "new",
    State.READY: "active",
    State.PAUSED: "stopped",
    State.DRAINING: "stopped",
    State.STOPPED: "closed",
}

_ALLOWED = {
    State.STARTING: {State.READY, State.DRAINING, State.STOPPED},
    State.READY: {State.PAUSED, State.DRAINING},
    State.PAUSED: {State.READY, State.DRAINING},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}


class Lifecycle:
    def __init__(self) -> None:
        self.state = State.STARTING
        self.since = time.time()

    def move(self, new: State) -> bool:
        """Change state if the transition is allowed; returns whether it happened."""
        if new == self.state or new not in _ALLOWED[self.state]:
            return False
        log.info("state %s -> %s", self.state, new)
        self.state, self.since = new, time.time()
        return True

    @property
    def asynq_status(self) -> str:
        return ASYNQ_STATUS[self.state]
