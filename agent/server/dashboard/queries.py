"""What the dashboard's pages read: queue counts, agents (asynq heartbeats) and one task.

Every read is one pipelined round trip (or one Lua call per queue, in one pipeline), the same
scripts as ``rundown-agent inspect`` (``agent/inspect/lua``), on the server's asyncio client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError

from agent.broker import keys
from agent.broker.messages import ServerInfo, WorkerInfo
from agent.broker.progress import PROGRESS_FIELD, decode_progress
from agent.inspect.inspector import TaskDetails, task_from_fields
from agent.inspect.inspector import _source as inspector_script

STATE_NAMES = ("pending", "active", "scheduled", "retry", "archived", "completed")


@dataclass(frozen=True)
class QueueRow:
    name: str
    pending: int
    active: int
    scheduled: int
    retry: int
    archived: int
    completed: int
    aggregating: int
    processed_total: int
    failed_total: int
    processed_today: int
    failed_today: int
    paused: bool
    latency: float  #: seconds the oldest pending task has waited

    @property
    def size(self) -> int:
        return (self.pending + self.active + self.scheduled + self.retry + self.archived
                + self.completed + self.aggregating)


@dataclass(frozen=True)
class AgentRow:
    id: str
    host: str
    pid: int
    status: str
    concurrency: int
    queues: dict[str, int]
    started: float
    running: int  #: handlers running (the heartbeat's active worker count)
    tasks: list[tuple[str, str, str, float]]  #: (task id, type, queue, started) in flight

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started) if self.started else 0.0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def all_queues(client: aioredis.Redis, configured: Sequence[str]) -> list[str]:
    """The configured queues, then any other queue listed in ``asynq:queues``."""
    extra = sorted(q.decode(errors="replace") for q in await client.smembers(keys.ALL_QUEUES))
    seen = set(configured)
    return list(configured) + [q for q in extra if q not in seen]


async def queue_rows(client: aioredis.Redis, queues: Sequence[str], now: float | None = None) -> list[QueueRow]:
    now = time.time() if now is None else now
    script = client.register_script(inspector_script("queue_stats"))
    rows: list[QueueRow] = []
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            await script(keys=[
                keys.pending(q), keys.active(q), keys.scheduled(q), keys.retry(q), keys.archived(q),
                keys.completed(q), keys.processed_day(q, now), keys.failed_day(q, now),
                keys.processed_total(q), keys.failed_total(q), keys.paused(q), keys.groups(q)],
                args=[keys.task_prefix(q), keys.group_prefix(q)], client=pipe)
        replies = await pipe.execute() if queues else []
    for q, v in zip(queues, replies, strict=True):
        since = _int(v[11])
        rows.append(QueueRow(
            name=q, pending=_int(v[0]), active=_int(v[1]), scheduled=_int(v[2]), retry=_int(v[3]),
            archived=_int(v[4]), completed=_int(v[5]), aggregating=_int(v[13]),
            processed_today=_int(v[6]), failed_today=_int(v[7]), processed_total=_int(v[8]),
            failed_total=_int(v[9]), paused=bool(_int(v[10])),
            latency=max(0.0, now - since / 1e9) if since > 0 else 0.0))
    return rows


async def agents(client: aioredis.Redis, now: float | None = None) -> list[AgentRow]:
    """Live servers from the asynq heartbeats (ours and Go's), with their in-flight tasks.
    Reads only: unlike asynq's listServerKeys it does not prune expired members."""
    now = time.time() if now is None else now
    server_keys = await client.zrangebyscore(keys.ALL_SERVERS, int(now), "+inf")
    worker_keys = await client.zrangebyscore(keys.ALL_WORKERS, int(now), "+inf")
    async with client.pipeline(transaction=False) as pipe:
        for key in server_keys:
            pipe.get(key)
        for key in worker_keys:
            pipe.hvals(key)
        replies = await pipe.execute(raise_on_error=False) if server_keys or worker_keys else []
    infos: dict[str, ServerInfo] = {}
    for raw in replies[:len(server_keys)]:
        info = ServerInfo()
        try:
            info.ParseFromString(raw)
        except (DecodeError, ValueError, TypeError):  # missing or written by a broken peer
            continue
        infos[info.server_id] = info
    running: dict[str, list[tuple[str, str, str, float]]] = {sid: [] for sid in infos}
    for values in replies[len(server_keys):]:
        for raw in values if isinstance(values, list) else []:
            worker = WorkerInfo()
            try:
                worker.ParseFromString(raw)
            except (DecodeError, ValueError, TypeError):
                continue
            if worker.server_id in running:
                running[worker.server_id].append(
                    (worker.task_id, worker.task_type, worker.queue, float(worker.start_time.seconds)))
    rows = [AgentRow(id=sid, host=i.host, pid=i.pid, status=i.status, concurrency=i.concurrency,
                     queues=dict(sorted(i.queues.items(), key=lambda kv: (-kv[1], kv[0]))),
                     started=float(i.start_time.seconds), running=i.active_worker_count,
                     tasks=sorted(running[sid], key=lambda t: t[3]))
            for sid, i in infos.items()]
    return sorted(rows, key=lambda a: (a.host, a.pid, a.id))


async def find_task(client: aioredis.Redis, queue: str, task_id: str) -> tuple[TaskDetails, dict[str, Any]] | None:
    """A task and the extra fields of its hash (``progress``: the handler's last report, decoded;
    any other field as text), or None."""
    script = client.register_script(inspector_script("get_task"))
    reply = await script(keys=[keys.task_key(queue, task_id), keys.lease(queue)],
                         args=[task_id, keys.queue_prefix(queue)])
    if not reply:
        return None
    flat, score, lease = reply
    fields = {flat[i].decode(errors="replace"): flat[i + 1] for i in range(0, len(flat), 2)}
    state = (fields.get("state") or b"").decode(errors="replace")
    task = task_from_fields(queue, task_id, state, fields.get("msg"), result=fields.get("result"),
                            score=score, lease=lease if state == "active" else None,
                            pending_since=fields.get("pending_since"),
                            group=(fields.get("group") or b"").decode(errors="replace"))
    progress = decode_progress(fields.pop(PROGRESS_FIELD, None))
    extra: dict[str, Any] = {k: v.decode(errors="replace")[:2000] for k, v in fields.items()
                             if k not in ("msg", "state", "result", "pending_since", "group", "unique_key")}
    if progress is not None:
        extra["progress"] = progress
    return task, extra


async def locate(client: aioredis.Redis, queues: Sequence[str], task_id: str) -> str | None:
    """The queue holding a task with this ID (the first one, in ``queues`` order)."""
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.exists(keys.task_key(q, task_id))
        found = await pipe.execute() if queues else []
    return next((q for q, hit in zip(queues, found, strict=True) if hit), None)
