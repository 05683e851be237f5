"""Write many asynq tasks straight into Redis with pipelined commands (no agent, no Lua): what
the dashboard's tests and benchmark search, group and act on.

Each task is a task hash (``msg`` = the asynq TaskMessage, ``state``, ``pending_since`` for
pending) plus its ID in the state's container, exactly the layout asynq and the agent leave.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from agent.broker import keys
from agent.broker.messages import TaskMessage

CHUNK = 5000


def seed_tasks(client: redis.Redis, queue: str, n: int, state: str, *,
               task_type: Callable[[int], str] = lambda i: "work",
               error: Callable[[int], str] = lambda i: "",
               when: Callable[[int], float] | None = None, start: int = 0,
               id_prefix: str = "t", payload: Callable[[int], bytes] = lambda i: b'{"n": %d}' % i) -> list[str]:
    """Write ``n`` tasks in ``state``; returns their IDs (``<id_prefix>-<index>``). ``when``
    gives the container's score (or pending_since), default: now."""
    now = time.time()
    client.sadd(keys.ALL_QUEUES, queue)
    ids: list[str] = []
    container = keys.STATE_CONTAINER[state](queue)
    for first in range(start, start + n, CHUNK):
        pipe = client.pipeline(transaction=False)
        scores: dict[str, float] = {}
        listed: list[str] = []
        for i in range(first, min(first + CHUNK, start + n)):
            task_id = f"{id_prefix}-{i:08d}"
            at = when(i) if when else now
            err = error(i)
            msg = TaskMessage(type=task_type(i), payload=payload(i), id=task_id, queue=queue, retry=25,
                              retried=1 if err else 0, error_msg=err,
                              last_failed_at=int(at) if err else 0, timeout=1800,
                              completed_at=int(at) if state == "completed" else 0,
                              retention=3600 if state == "completed" else 0).SerializeToString()
            fields: dict[str, object] = {"msg": msg, "state": state}
            if state == "pending":
                fields["pending_since"] = int(at * 1e9)
            pipe.hset(keys.task_key(queue, task_id), mapping=fields)
            if state in ("pending", "active"):
                listed.append(task_id)
            else:
                scores[task_id] = int(at + 3600) if state == "completed" else int(at)
            ids.append(task_id)
        if listed:
            pipe.lpush(container, *listed)
        if scores:
            pipe.zadd(container, scores)
        pipe.execute()
    return ids
