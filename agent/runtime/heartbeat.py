"""Heartbeat in asynq's format, so asynq.Inspector, the asynq CLI and asynqmon list us.

Every ``interval`` seconds (asynq: 5) it writes ``asynq:servers`` / ``asynq:workers`` and
the ServerInfo / WorkerInfo keys with a 10 s TTL. It runs on the event loop on purpose:
if the loop stalls, the heartbeat stops and the agent disappears from the Inspector.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from agent.broker import Broker, DequeuedTask
from agent.broker.messages import ServerInfo, WorkerInfo
from agent.broker.plans import processing_deadline
from agent.runtime.loop import PeriodicLoop

HEARTBEAT_TTL = 10


class Identity:
    """host:pid:server_id, as asynq names a server."""

    def __init__(self, host: str | None = None, pid: int | None = None, server_id: str | None = None):
        self.host = host or socket.gethostname() or "unknown-host"
        self.pid = pid or os.getpid()
        self.server_id = server_id or str(uuid.uuid4())
        self.started = time.time()


class Heartbeat(PeriodicLoop):
    name = "heartbeat"
    interval = 5.0

    def __init__(self, broker: Broker, identity: Identity, queues: Mapping[str, int],
                 concurrency: int, strict: bool, status: Callable[[], str],
                 in_flight: Callable[[], Sequence[DequeuedTask]]) -> None:
        super().__init__()
        self.broker = broker
        self.identity = identity
        self.queues = dict(queues)
        self.concurrency = concurrency
        self.strict = strict
        self.status = status
        self.in_flight = in_flight

    def server_info(self, active: int) -> ServerInfo:
        ident = self.identity
        info = ServerInfo(host=ident.host, pid=ident.pid, server_id=ident.server_id,
                          concurrency=self.concurrency, strict_priority=self.strict,
                          status=self.status(), active_worker_count=active)
        for name, weight in self.queues.items():
            info.queues[name] = weight
        info.start_time.seconds = int(ident.started)
        info.start_time.nanos = int((ident.started % 1) * 1e9)
        return info

    def worker_info(self, task: DequeuedTask) -> WorkerInfo:
        ident = self.identity
        msg = task.message
        worker = WorkerInfo(host=ident.host, pid=ident.pid, server_id=ident.server_id,
                            task_id=task.id, queue=task.queue,
                            task_type=msg.type if msg else "", task_payload=msg.payload if msg else b"")
        worker.start_time.seconds = int(task.started_at)
        if msg:
            worker.deadline.seconds = processing_deadline(msg, task.started_at)
        return worker

    async def tick(self) -> None:
        tasks = list(self.in_flight())
        await self.broker.write_server_state(self.server_info(len(tasks)),
                                             [self.worker_info(t) for t in tasks], HEARTBEAT_TTL)

    async def clear(self) -> None:
        ident = self.identity
        await self.broker.clear_server_state(ident.host, ident.pid, ident.server_id)
