"""The workflow recovery loop: finishes moves a crash interrupted, and follows the tasks
that workflows wait on without a hook (``depends_on`` tasks, steps run by a Go server).

Every agent runs it; a short Redis lock lets one of them sweep per interval. For each
unfinished workflow it enqueues ``ready`` steps (their task IDs make this idempotent) and
looks at the task of each ``enqueued`` or ``failed`` step: ``completed`` (or gone: a task
deleted on success) completes the step with the task's result, ``archived`` fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from agent.broker import keys as asynq_keys
from agent.runtime.loop import PeriodicLoop
from agent.workflows import keys as wk
from agent.workflows.engine import WorkflowEngine, _reply, _text

log = logging.getLogger("agent.workflows")

LOCK = "rundown:workflows:sweep"
BATCH = 200  #: workflows per sweep (the oldest first; the rest at the next sweep)
ORPHAN_AFTER = 60.0  #: seconds after which an indexed workflow with no state is dropped


class WorkflowRecovery(PeriodicLoop):
    name = "workflow-recovery"
    interval = 1.0
    tick_timeout = 10.0

    def __init__(self, redis: Any) -> None:
        super().__init__()
        self.engine = WorkflowEngine(redis)
        self.redis = redis
        self.token = str(uuid.uuid4())
        self.recovered = 0

    async def stop(self) -> None:
        """At once, even mid-sweep: every move is an atomic script, and the next sweep (by any
        agent) takes up whatever this one left."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def tick(self) -> None:
        if not await self.redis.set(LOCK, self.token, nx=True, px=int(self.interval * 900)):
            return  # another agent sweeps this interval
        self.recovered += await sweep(self.engine, BATCH)


async def sweep(engine: WorkflowEngine, limit: int = BATCH) -> int:
    """One pass over the unfinished workflows; returns the steps it moved on."""
    redis = engine.redis
    moved = 0
    now = time.time()
    for raw, created in await _reply(redis.zrange(wk.INDEX, 0, limit - 1, withscores=True)):
        wid = _text(raw)
        meta_key, specs_key, state_key, *_ = wk.workflow_keys(wid)
        state = await _reply(redis.hget(meta_key, "state"))
        if state is None and now - created < ORPHAN_AFTER:
            continue  # indexed a moment ago; its state is being written
        if state is None or _text(state) == "succeeded":
            await _reply(redis.zrem(wk.INDEX, wid))  # finished, or its keys expired
            continue
        states = {_text(k): _text(v) for k, v in (await _reply(redis.hgetall(state_key))).items()}
        ready = sorted((n for n, s in states.items() if s == "ready"), key=int)
        if ready:
            await engine.enqueue_ready(wid, ready)
            moved += len(ready)
        watched = sorted((n for n, s in states.items() if s in ("enqueued", "failed")), key=int)
        if not watched:
            continue
        specs = await _reply(redis.hmget(specs_key, watched))
        tasks = [_task_of(wid, node, spec) for node, spec in zip(watched, specs, strict=True)]
        pipe = redis.pipeline(transaction=False)
        for queue, task_id in tasks:
            pipe.hmget(asynq_keys.task_key(queue, task_id), ["state", "result", "msg"])
        found = await _reply(pipe.execute())
        for node, (task_state, result, msg) in zip(watched, found, strict=True):
            if task_state is None or _text(task_state) == "completed":
                await engine.completed(wid, node, result)
                moved += 1
            elif _text(task_state) == "archived" and states[node] == "enqueued":
                await engine.failed(wid, node, _error_of(msg))
                moved += 1
    return moved


def _task_of(wid: str, node: str, spec: bytes) -> tuple[str, str]:
    import json

    data = json.loads(spec)
    if data.get("external"):
        queue, task_id = data["external"]
        return queue, task_id
    return (data.get("opts") or {}).get("queue", "default"), wk.node_task_id(wid, node)


def _error_of(msg: bytes | None) -> str:
    from agent.broker.messages import MessageDecodeError, decode_task_message

    if not msg:
        return "archived"
    try:
        return decode_task_message(msg).error_msg or "archived"
    except MessageDecodeError:
        return "archived"
