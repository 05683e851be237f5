"""What ``Client.chain``, ``Client.group`` and ``enqueue(..., depends_on=)`` do, for the sync
and asyncio clients alike (``engine.run_sync`` drives these coroutines on a sync client)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.broker import keys as asynq_keys
from agent.broker.errors import TaskNotFoundError
from agent.broker.taskinfo import TaskInfo
from agent.workflows import keys as wk
from agent.workflows.engine import WorkflowEngine, _reply
from agent.workflows.graph import Chain, Group, Sig, build_graph, sig


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow just created: its ID and the task ID of each step, in the order the
    steps were given (a group's ``then`` last)."""

    id: str
    task_ids: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)


async def create(engine: WorkflowEngine, shape: Any, workflow_id: str | None = None,
                 external: list[tuple[str, str]] | None = None) -> WorkflowInfo:
    nodes = build_graph(shape, external)
    wid = await engine.create(nodes, workflow_id)
    own = [n for n in nodes if n.external is None]
    return WorkflowInfo(wid, [wk.node_task_id(wid, n.id) for n in own],
                        [n.options.get("queue", "default") for n in own])


def chain_shape(steps: list[Any]) -> Chain:
    if not isinstance(steps, (list, tuple)) or not steps:
        raise ValueError("chain: give a non-empty list of sig(...) steps")
    return Chain(tuple(steps))


def group_shape(members: list[Any], then: Sig | None) -> Group:
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError("group: give a non-empty list of sig(...) members")
    if then is not None and not isinstance(then, Sig):
        raise ValueError("group: then= must be one sig(...)")
    return Group(tuple(members), then)


async def enqueue_after(engine: WorkflowEngine, task_type: str, payload: Any,
                        depends_on: list[Any], options: dict[str, Any]) -> TaskInfo:
    """``enqueue(..., depends_on=[...])``: the task is enqueued once every task named has
    completed (its ID is returned now; its state is ``waiting`` until then)."""
    if not isinstance(depends_on, (list, tuple)) or not depends_on:
        raise ValueError("depends_on: give a non-empty list of task IDs (or TaskInfo)")
    step = sig(task_type, payload, pass_result=False, **options)
    external = [await _locate(engine.redis, dep, i) for i, dep in enumerate(depends_on)]
    info = await create(engine, step, None, external)
    return TaskInfo(id=info.task_ids[0], queue=info.queues[0], state="waiting", type=task_type)


async def _locate(redis: Any, dep: Any, index: int) -> tuple[str, str]:
    """(queue, task id) of a dependency: a TaskInfo, a (queue, id) pair, or an ID looked up
    in every queue asynq knows."""
    if isinstance(dep, TaskInfo):
        return dep.queue, dep.id
    if isinstance(dep, (tuple, list)) and len(dep) == 2 and all(isinstance(x, str) for x in dep):
        queue, task_id = dep
        if not await _reply(redis.exists(asynq_keys.task_key(queue, task_id))):
            raise TaskNotFoundError(queue, task_id)
        return queue, task_id
    if not isinstance(dep, str) or not dep.strip():
        raise ValueError(f"depends_on[{index}]: expected a task ID, a (queue, id) pair or a TaskInfo, "
                         f"got {type(dep).__name__}")
    queues = sorted(q.decode() if isinstance(q, bytes) else q
                    for q in await _reply(redis.smembers(asynq_keys.ALL_QUEUES)))
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.exists(asynq_keys.task_key(queue, dep))
    found = [q for q, n in zip(queues, await _reply(pipe.execute()) if queues else [], strict=True) if n]
    if not found:
        raise ValueError(f"depends_on[{index}]: task {dep!r} is in no queue (a task deleted on "
                         "success is gone: give the tasks you depend on a retention)")
    if len(found) > 1:
        raise ValueError(f"depends_on[{index}]: task {dep!r} is in several queues "
                         f"({', '.join(found)}); give a (queue, id) pair")
    return found[0], dep
