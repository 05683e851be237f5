"""Task actions of the dashboard: retry (run now), archive, delete one or many tasks, cancel a
running one, pause and unpause a queue.

Each task operation runs the Inspector's script for it (``agent/inspect/lua``: the same Redis
state as asynq's ``Inspector.RunTask`` / ``ArchiveTask`` / ``DeleteTask``), so it checks the
task's state atomically and refuses what asynq refuses (an active task cannot be deleted).
Many tasks are sent as pipelined ``EVALSHA`` calls in chunks, so 10,000 tasks cost a few
round trips, not 10,000, and Redis is never blocked by one long script.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from agent.broker import keys
from agent.broker.plans import ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE
from agent.inspect.inspector import _source as inspector_script

OPERATIONS = ("retry", "archive", "delete")
_SCRIPT = {"retry": "run_task", "archive": "archive_task", "delete": "delete_task"}
CHUNK = 1000
MAX_TASKS = 1_000_000

#: what the scripts' codes mean, per operation (1 is done)
_CODES = {
    "retry": {0: "not found", -1: "running", -2: "already pending"},
    "archive": {0: "not found", -1: "already archived", -2: "running"},
    "delete": {0: "not found", -1: "running"},
}


@dataclass
class ActionResult:
    operation: str
    done: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  #: reason -> tasks
    seconds: float = 0.0

    def summary(self) -> str:
        verb = {"retry": "moved to pending", "archive": "archived", "delete": "deleted"}[self.operation]
        text = f"{self.done:,} task{'s' if self.done != 1 else ''} {verb}"
        if self.skipped:
            text += " (" + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items())) + ")"
        return text


def _call(operation: str, queue: str, task_id: str, now: int) -> tuple[list[str], list[object]]:
    prefix, group_prefix = keys.queue_prefix(queue), keys.group_prefix(queue)
    task = keys.task_key(queue, task_id)
    if operation == "retry":
        return [task, keys.pending(queue), keys.groups(queue)], [task_id, prefix, group_prefix]
    if operation == "archive":
        return ([task, keys.archived(queue), keys.groups(queue)],
                [task_id, now, now - ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE, prefix, group_prefix])
    return [task, keys.groups(queue)], [task_id, prefix, group_prefix]


async def apply(client: aioredis.Redis, operation: str, tasks: Iterable[tuple[str, str]]) -> ActionResult:
    """Run ``operation`` on every (queue, task id) of ``tasks``."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    started = time.perf_counter()
    result = ActionResult(operation)
    sha = await client.script_load(inspector_script(_SCRIPT[operation]))  # EVALSHA finds it
    batch: list[tuple[str, str]] = []
    for item in tasks:
        batch.append(item)
        if len(batch) >= CHUNK:
            await _run_chunk(client, sha, operation, batch, result)
            batch = []
    if batch:
        await _run_chunk(client, sha, operation, batch, result)
    result.seconds = time.perf_counter() - started
    return result


async def _run_chunk(client: aioredis.Redis, sha: str, operation: str, batch: list[tuple[str, str]],
                     result: ActionResult) -> None:
    now = int(time.time())
    async with client.pipeline(transaction=False) as pipe:
        for queue, task_id in batch:
            script_keys, args = _call(operation, queue, task_id, now)
            pipe.evalsha(sha, len(script_keys), *script_keys, *args)
        replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            result.skipped["inconsistent (" + str(reply)[:80] + ")"] += 1
        elif int(reply) == 1:
            result.done += 1
        else:
            result.skipped[_CODES[operation].get(int(reply), f"code {reply}")] += 1


async def cancel(client: aioredis.Redis, task_id: str) -> int:
    """Ask every agent (and Go server) to cancel the task if it runs it; returns the number of
    subscribers that got the message (``PUBLISH asynq:cancel``, as asynq's Inspector)."""
    return int(await client.publish(keys.CANCEL_CHANNEL, task_id))
