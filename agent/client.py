"""Producer clients: enqueue tasks and read their fate, in asynq's format.

``Client`` is synchronous (web apps, scripts); ``AsyncClient`` is for asyncio code. Both
accept every option of ``asynq.Client.Enqueue`` as keyword arguments (see
``agent.broker.options.EnqueueOptions``). ``redis`` is imported only when a client is made.

    from agent.client import Client
    with Client("redis://localhost:6379/0") as client:
        info = client.enqueue("email:send", {"to": "a@example.com"}, queue="critical",
                              max_retry=5, timeout=30, unique_ttl=3600)
        print(client.wait(info.queue, info.id, timeout=10).result_json())
"""

from __future__ import annotations

import json
import time
from typing import Any

from agent.broker import keys, plans
from agent.broker.errors import DuplicateTaskError, TaskIDConflictError, TaskNotFoundError
from agent.broker.options import EnqueueOptions
from agent.broker.taskinfo import FINAL_STATES, TaskInfo, task_info_from_hash
from agent.workflows.graph import Sig, sig

__all__ = ["AsyncClient", "Client", "Sig", "encode_payload", "sig"]


def encode_payload(payload: Any) -> bytes | None:
    """bytes pass through, str is UTF-8 encoded, anything else is JSON-encoded."""
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _raise_for_code(code: int, plan: plans.EnqueuePlan) -> TaskInfo:
    res = plan.result
    if code == 0:
        raise TaskIDConflictError(res.queue, res.id)
    if code == -1:
        raise DuplicateTaskError(res.queue, res.message.unique_key)
    return TaskInfo(id=res.id, queue=res.queue, state=res.state, type=res.message.type,
                    payload=res.message.payload, max_retry=res.message.retry,
                    next_process_at=res.process_at)


def _plan(task_type: str, payload: Any, options: dict[str, Any]) -> plans.EnqueuePlan:
    return plans.plan_enqueue(task_type, encode_payload(payload), EnqueueOptions(**options))


_producer: Any = None  # agent.tracing.producer once imported; False without opentelemetry


def _trace(task_type: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The enqueue span (None without opentelemetry) and the options with its W3C context
    in their headers (docs/tracing.md)."""
    global _producer
    if _producer is None:
        from agent.tracing import producer

        _producer = producer if producer.available() else False
    if _producer is False:
        return None, options
    return _producer.start_for_options(task_type, options)


def _traced_end(span: Any, info: Any) -> None:
    if span is not None:
        _producer.finish(span, info.id if isinstance(info, TaskInfo) else None,
                         info if isinstance(info, BaseException) else None)


class Client:
    """Synchronous producer client."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, redis_client=None, **redis_kwargs) -> None:
        from agent.broker.connection import sync_client
        from agent.broker.scripts import Scripts

        # Any connection URL: redis://, rediss://, unix://, redis+cluster://, redis+sentinel://
        self.redis = redis_client or sync_client(url, **redis_kwargs)
        self._scripts = Scripts(self.redis)
        self._queues: set[str] = set()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.redis.close()

    def _register(self, queue: str) -> None:
        if queue not in self._queues:
            self.redis.sadd(keys.ALL_QUEUES, queue)
            self._queues.add(queue)

    def enqueue(self, task_type: str, payload: Any = None, *, depends_on: list[Any] | None = None,
                **options: Any) -> TaskInfo:
        """Enqueue a task; with ``depends_on`` (task IDs, (queue, id) pairs or TaskInfo) it is
        enqueued once each of them completed (state ``waiting`` until then)."""
        if depends_on is not None:
            from agent.workflows import client as wf
            from agent.workflows.engine import run_sync

            return run_sync(wf.enqueue_after(self._workflows(), task_type, payload, depends_on, options))
        span, options = _trace(task_type, options)
        try:
            plan = _plan(task_type, payload, options)
            self._register(plan.result.queue)
            call = plan.call
            code = getattr(self._scripts, call.script)(keys=call.keys, args=call.args)
            info = _raise_for_code(int(code), plan)
        except Exception as exc:
            _traced_end(span, exc)
            raise
        _traced_end(span, info)
        return info

    def enqueue_many(self, tasks: list[tuple[str, Any, dict[str, Any]]]) -> list[TaskInfo | Exception]:
        """Enqueue a batch in one round trip; returns each task's info or its error."""
        traced = [_trace(t, o) for t, _, o in tasks]
        planned = [_plan(t, p, o) for (t, p, _), (_, o) in zip(tasks, traced, strict=True)]
        for queue in {p.result.queue for p in planned}:
            self._register(queue)
        pipe = self.redis.pipeline(transaction=False)
        for plan in planned:
            getattr(self._scripts, plan.call.script)(keys=plan.call.keys, args=plan.call.args, client=pipe)
        out: list[TaskInfo | Exception] = []
        for plan, code in zip(planned, pipe.execute(raise_on_error=False), strict=True):
            try:
                out.append(code if isinstance(code, Exception) else _raise_for_code(int(code), plan))
            except Exception as exc:  # noqa: BLE001 - reported per item
                out.append(exc)
        for (span, _), info in zip(traced, out, strict=True):
            _traced_end(span, info)
        return out

    def _workflow_step_waits(self, queue: str, task_id: str) -> bool:
        """A workflow step (``depends_on`` included) not enqueued yet: waiting, or ready, or
        enqueued since the task was looked for."""
        from agent.workflows import keys as wk

        wid, _, node = task_id.rpartition(":")
        if not wid or not node.isdigit():
            return False
        state = self.redis.hget(wk.workflow_keys(wid)[2], node)
        return state in (b"waiting", b"ready") or (
            state is not None and bool(self.redis.exists(keys.task_key(queue, task_id))))

    def _workflows(self):
        from agent.workflows.engine import WorkflowEngine

        if getattr(self, "_engine", None) is None:
            self._engine = WorkflowEngine(self.redis, self._scripts)
        return self._engine

    def chain(self, steps: list[Any], *, workflow_id: str | None = None):
        """Run ``steps`` (``sig(...)``, or nested groups) one after another, each receiving the
        previous result; returns a ``WorkflowInfo`` (its ID and each step's task ID)."""
        from agent.workflows import client as wf
        from agent.workflows.engine import run_sync

        return run_sync(wf.create(self._workflows(), wf.chain_shape(steps), workflow_id))

    def group(self, members: list[Any], *, then: Sig | None = None, workflow_id: str | None = None):
        """Run ``members`` at once; ``then`` runs once after all of them, with their results
        in order (``payload["results"]``)."""
        from agent.workflows import client as wf
        from agent.workflows.engine import run_sync

        return run_sync(wf.create(self._workflows(), wf.group_shape(members, then), workflow_id))

    def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow and each step's state (as ``GET /workflows/{id}`` shows it), or None."""
        from agent.workflows.engine import run_sync

        return run_sync(self._workflows().show(workflow_id))

    def get_task(self, queue: str, task_id: str) -> TaskInfo:
        """The task's current state; ``TaskNotFoundError`` if it does not exist (or was
        deleted on success without retention)."""
        fields = self.redis.hgetall(keys.task_key(queue, task_id))
        if not fields:
            raise TaskNotFoundError(queue, task_id)
        state = fields.get(b"state", b"").decode()
        score = None
        if state in ("scheduled", "retry"):
            score = self.redis.zscore(f"{keys.queue_prefix(queue)}{state}", task_id)
        return task_info_from_hash(queue, task_id, fields, score)

    def wait(self, queue: str, task_id: str, timeout: float = 30.0, poll: float = 0.05) -> TaskInfo:
        """Wait until the task is completed, archived or deleted; raise TimeoutError otherwise.

        A task that succeeds with no retention is deleted by asynq: that is reported as
        state ``deleted``. Give tasks a ``retention`` to keep their result readable.
        """
        deadline = time.monotonic() + timeout
        seen = False
        while True:
            try:
                info = self.get_task(queue, task_id)
                seen = True
                if info.state in FINAL_STATES:
                    return info
            except TaskNotFoundError:
                if seen:
                    return TaskInfo(id=task_id, queue=queue, state="deleted")
                if not self._workflow_step_waits(queue, task_id):
                    raise
                info = TaskInfo(id=task_id, queue=queue, state="waiting")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id!r} in queue {queue!r} still {info.state} after {timeout}s")
            time.sleep(poll)


class AsyncClient:
    """asyncio producer client with the same methods as ``Client`` (awaitable)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, redis_client=None, **redis_kwargs) -> None:
        from agent.broker import Broker
        from agent.broker.connection import async_client

        self.broker = Broker(redis_client or async_client(url, **redis_kwargs))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.broker.close()

    async def enqueue(self, task_type: str, payload: Any = None, *, depends_on: list[Any] | None = None,
                      **options: Any) -> TaskInfo:
        if depends_on is not None:
            from agent.workflows import client as wf

            return await wf.enqueue_after(self._workflows(), task_type, payload, depends_on, options)
        span, options = _trace(task_type, options)
        try:
            plan = _plan(task_type, payload, options)
            await self.broker.register_queues([plan.result.queue])
            code = await self.broker._run(plan.call)
            info = _raise_for_code(int(code), plan)
        except Exception as exc:
            _traced_end(span, exc)
            raise
        _traced_end(span, info)
        return info

    async def get_task(self, queue: str, task_id: str) -> TaskInfo:
        return await self.broker.get_task(queue, task_id)

    def _workflows(self):
        from agent.workflows.engine import WorkflowEngine

        if getattr(self, "_engine", None) is None:
            self._engine = WorkflowEngine(self.broker.redis)
        return self._engine

    async def chain(self, steps: list[Any], *, workflow_id: str | None = None):
        from agent.workflows import client as wf

        return await wf.create(self._workflows(), wf.chain_shape(steps), workflow_id)

    async def group(self, members: list[Any], *, then: Sig | None = None, workflow_id: str | None = None):
        from agent.workflows import client as wf

        return await wf.create(self._workflows(), wf.group_shape(members, then), workflow_id)

    async def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        return await self._workflows().show(workflow_id)
