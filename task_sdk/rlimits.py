"""The one_shot resource limits, applied in a task's own process: by the agent to a child it
executes (a ``preexec_fn``) and by the zygote to a child it forks. Plain system calls only."""

from __future__ import annotations

import resource

CPU_KILL_AFTER = 5
"""Seconds between SIGXCPU (the soft CPU limit) and SIGKILL (the hard one)."""


def apply_rlimits(address_space: object, cpu_seconds: object) -> None:
    """Set RLIMIT_AS to ``address_space`` bytes and RLIMIT_CPU to ``cpu_seconds``, each only
    when it is a positive int, and never above a hard limit already in force."""
    for which, value in ((resource.RLIMIT_AS, address_space), (resource.RLIMIT_CPU, cpu_seconds)):
        if not isinstance(value, int) or value <= 0:
            continue
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        top = value + CPU_KILL_AFTER if which == resource.RLIMIT_CPU else value
        if hard != resource.RLIM_INFINITY:
            top = min(top, hard)
        resource.setrlimit(which, (value, top))
