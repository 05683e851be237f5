"""The child-process supervisor's public face: build a pool for a queue and run tasks in it.

Usage (the runtime)::

    argv = resolve_argv(deployment.startup_cmd, venv_dir)
    env = build_child_env(deployment.env, secrets, venv_dir)
    spec = ChildSpec(argv=argv, cwd=code_dir, env=env, startup_timeout=60,
                     threads=1, prefetch=4, queue="emails")
    pool = create_pool(spec, mode="long_running", processes=2)   # None: as concurrency needs
    await pool.start()                   # ChildStartupError if the code cannot start
    outcome = await pool.run(request)    # or pool.execute(dequeued_task, deadline)
    await pool.stop()

Everything a child does becomes an ``Outcome`` (``success`` / ``retry`` / ``archive`` /
``requeue``); only an unhealthy or stopping pool raises (``PoolUnavailable``).
"""

from __future__ import annotations

from typing import Literal

from agent.supervisor.child import Child, ChildExit, ChildStartupError, describe_exit
from agent.supervisor.health import Capacity, CrashSuspects, CrashTracker, RestartPolicy
from agent.supervisor.launch import ChildSpec, StartupCommandError, build_child_env, resolve_argv
from agent.supervisor.long_running import LongRunningPool
from agent.supervisor.one_shot import OneShotPool
from agent.supervisor.outcome import Outcome
from agent.supervisor.pool import ChildPool, PoolUnavailable
from agent.supervisor.task_request import TaskRequest

__all__ = [
    "Capacity",
    "CrashSuspects",
    "Child",
    "ChildExit",
    "ChildPool",
    "ChildSpec",
    "ChildStartupError",
    "CrashTracker",
    "LongRunningPool",
    "OneShotPool",
    "Outcome",
    "PoolUnavailable",
    "RestartPolicy",
    "StartupCommandError",
    "TaskRequest",
    "build_child_env",
    "create_pool",
    "describe_exit",
    "resolve_argv",
]

Mode = Literal["long_running", "one_shot"]


def create_pool(
    spec: ChildSpec,
    *,
    mode: Mode = "long_running",
    processes: int | None = 1,
    restart: RestartPolicy | None = None,
    capacity: Capacity | None = None,
    target_slots: int = 1,
    one_shot_start: str = "fork",
    one_shot_load: str = "per_task",
) -> ChildPool:
    """The pool of one deployment: warm children (``processes``, or None for as many as
    ``target_slots`` handlers at once need), or a fresh child per task. ``capacity`` is
    shared by every pool of the agent (``worker.concurrency``). ``one_shot_start`` and
    ``one_shot_load``: how one_shot processes start (see ``OneShotPool``)."""
    if mode == "long_running":
        return LongRunningPool(spec, processes, restart, capacity=capacity, target_slots=target_slots)
    if mode == "one_shot":
        return OneShotPool(spec, restart, capacity=capacity, start=one_shot_start,
                           load=one_shot_load)
    raise ValueError(
        f"queue {spec.queue!r}: mode must be 'long_running' or 'one_shot', got {mode!r}"
    )
