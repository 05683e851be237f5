"""Creating workflows and moving them on: one code path for sync and asyncio Redis clients.

Every method is a coroutine that awaits a Redis reply only through :func:`_reply`; with a
synchronous client nothing ever suspends, and :func:`run_sync` runs the coroutine to its end
without an event loop (the sync ``Client`` uses it).

Crash safety: a step's successors are computed by one script (``keys.COMPLETE``) in the
workflow's slot, and each successor's task ID is derived from the workflow and the node, so
enqueuing it twice writes it once. A crash between the two leaves the successor ``ready``;
whoever drives the workflow next (the step's hook run again, or ``recovery.WorkflowRecovery``)
enqueues it.
"""

from __future__ import annotations

import base64
import inspect
import json
import time
import uuid
from typing import Any

from agent.broker import keys as asynq_keys
from agent.broker import plans
from agent.broker.errors import DuplicateTaskError
from agent.broker.options import EnqueueOptions
from agent.broker.scripts import Scripts
from agent.workflows import keys as wk
from agent.workflows.graph import Node


async def _reply(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def run_sync(coro: Any) -> Any:
    """Run a coroutine of this module on a synchronous client (it never suspends)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a workflow call needed an event loop: use an asyncio Redis client with await")


def decode_result(raw: bytes | None) -> Any:
    """A step's result as its successors receive it: JSON when it is JSON, else text."""
    if raw is None or raw == b"":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


class WorkflowEngine:
    """Workflow operations on one Redis client (sync or asyncio)."""

    def __init__(self, redis: Any, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)
        self._create = redis.register_script(wk.CREATE)
        self._complete = redis.register_script(wk.COMPLETE)
        self._fail = redis.register_script(wk.FAIL)
        self._mark = redis.register_script(wk.MARK_ENQUEUED)
        self._queues: set[str] = set()

    # -- creation ----------------------------------------------------------------------

    async def create(self, nodes: list[Node], workflow_id: str | None = None) -> str:
        """Write the workflow, then enqueue its first tasks. Returns its ID."""
        wid = workflow_id or str(uuid.uuid4())
        if not wid.strip() or len(wid) > 128 or "{" in wid or "}" in wid:
            raise ValueError("workflow_id: a non-blank string of at most 128 characters, without braces")
        now = int(time.time())
        args: list[Any] = [len(nodes), now]
        for node in nodes:
            args += [node.id, node.to_json(), len(node.deps)]
        await _reply(self.redis.zadd(wk.INDEX, {wid: now}))  # first: recovery finds it
        created = await _reply(self._create(keys=wk.workflow_keys(wid), args=args))
        if not int(created):
            raise ValueError(f"workflow {wid!r} exists already")
        await self.enqueue_ready(wid, [n.id for n in nodes if not n.deps and n.external is None])
        return wid

    # -- moving on ---------------------------------------------------------------------

    async def enqueue_ready(self, wid: str, nodes: list[str],
                            known: list[tuple[dict, dict[str, bytes | None]]] | None = None) -> None:
        """Enqueue the tasks of ``ready`` nodes (again, harmlessly, if they were); ``known``:
        each node's spec and dependency results when the caller has them already."""
        if not nodes:
            return
        if known is not None:
            specs = [spec for spec, _ in known]
            results = {d: r for _, found in known for d, r in found.items()}
        else:
            _, specs_key, _, _, results_key, _ = wk.workflow_keys(wid)
            specs = [json.loads(s) for s in await _reply(self.redis.hmget(specs_key, nodes))]
            deps = sorted({d for spec in specs for d in spec["deps"]}, key=int)
            results = dict(zip(deps, await _reply(self.redis.hmget(results_key, deps)), strict=True)) if deps else {}
        planned = [self._plan(wid, node, spec, results) for node, spec in zip(nodes, specs, strict=True)]
        new_queues = {p.result.queue for p in planned} - self._queues
        pipe = self.redis.pipeline(transaction=False)
        if new_queues:
            pipe.sadd(asynq_keys.ALL_QUEUES, *sorted(new_queues))
        for plan in planned:
            await _reply(getattr(self.scripts, plan.call.script)(
                keys=plan.call.keys, args=plan.call.args, client=pipe))
        codes = await _reply(pipe.execute(raise_on_error=False))
        self._queues |= new_queues
        codes = codes[1:] if new_queues else codes
        for plan, code in zip(planned, codes, strict=True):
            if isinstance(code, Exception):
                raise code
            if int(code) == -1:
                raise DuplicateTaskError(plan.result.queue, plan.result.message.unique_key)
        await _reply(self._mark(keys=wk.workflow_keys(wid), args=nodes))

    def _plan(self, wid: str, node: str, spec: dict[str, Any], results: dict[str, bytes | None]):
        payload = spec.get("payload")
        if "payload_b64" in spec:
            payload = base64.b64decode(spec["payload_b64"])
        passes = spec.get("passes")
        if passes:
            payload = dict(payload or {})
            values = [decode_result(results.get(d)) for d in spec["deps"]]
            if passes == "previous":
                payload["previous"] = values[0]
            else:
                payload["results"] = values
        if isinstance(payload, bytes | None):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload, separators=(",", ":")).encode()
        opts = dict(spec.get("opts") or {})
        headers = {**(opts.pop("headers", None) or {}), wk.HEADER_WORKFLOW: wid, wk.HEADER_NODE: node}
        options = EnqueueOptions(task_id=wk.node_task_id(wid, node), headers=headers, **opts)
        return plans.plan_enqueue(spec["type"], data, options)

    async def completed(self, wid: str, node: str, result: bytes | None) -> str:
        """A step succeeded: record its result and enqueue what it unblocked. Returns the
        workflow's state (``missing`` for an unknown workflow or node)."""
        reply = await _reply(self._complete(keys=wk.workflow_keys(wid),
                                            args=[node, result or b"", int(time.time()), wk.KEEP_FINISHED]))
        state, ready, known = _text(reply[0]), [], []
        for node, spec, results in reply[1:]:
            ready.append(_text(node))
            spec = json.loads(spec)
            known.append((spec, dict(zip(spec["deps"], results, strict=True))))
        await self.enqueue_ready(wid, ready, known)
        if state == "succeeded":
            await _reply(self.redis.zrem(wk.INDEX, wid))
        return state

    async def failed(self, wid: str, node: str, error: str) -> None:
        """A step's task was archived: the workflow is failed and its descendants wait (a
        retry of the task that succeeds moves it on)."""
        await _reply(self._fail(keys=wk.workflow_keys(wid), args=[node, error[:4096]]))

    # -- reading -----------------------------------------------------------------------

    async def show(self, wid: str) -> dict[str, Any] | None:
        """The workflow and each step's state, task, result or error; None if unknown."""
        meta_key, specs_key, state_key, _, results_key, errors_key = wk.workflow_keys(wid)
        pipe = self.redis.pipeline(transaction=False)
        for key in (meta_key, specs_key, state_key, results_key, errors_key):
            pipe.hgetall(key)
        meta, specs, states, results, errors = await _reply(pipe.execute())
        if not meta:
            return None
        steps = []
        for node in sorted((_text(k) for k in specs), key=int):
            spec = json.loads(specs[node.encode()])
            ext = spec.get("external")
            step = {"node": node, "state": _text(states.get(node.encode(), b"")),
                    "queue": ext[0] if ext else (spec.get("opts") or {}).get("queue", "default"),
                    "task_id": ext[1] if ext else wk.node_task_id(wid, node),
                    "type": spec.get("type"), "after": spec["deps"]}
            if node.encode() in results:
                step["result"] = decode_result(results[node.encode()])
            if node.encode() in errors:
                step["error"] = _text(errors[node.encode()])
            steps.append(step)
        info = {_text(k): _text(v) for k, v in meta.items()}
        return {"id": wid, "state": info.get("state"), "total": int(info.get("total", 0)),
                "done": int(info.get("done", 0)), "failed": int(info.get("failed", 0)),
                "created": int(info.get("created", 0)),
                **({"finished": int(info["finished"])} if "finished" in info else {}),
                "steps": steps}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
