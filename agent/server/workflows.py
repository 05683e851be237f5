"""``POST /workflows`` and ``GET /workflows/{id}``: the same shapes as ``Client.chain``,
``Client.group`` and ``enqueue(..., depends_on=)``, for producers in any language.

A body is one shape: ``{"chain": [step, ...]}``, ``{"group": [member, ...], "then": task}``,
or a task with ``"depends_on": [task id, ...]``; steps and members are tasks or nested shapes.
A task is ``{"type", "payload", "queue", "max_retry", "timeout", "deadline", "process_in",
"retention", "headers", "pass_result"}``; its queue must be one of the server's, and the
queue's ``task_defaults`` fill what it does not give. ``"workflow_id"`` chooses the ID.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.broker.errors import TaskNotFoundError
from agent.server.app import ApiError, _json_body, _resolve_queue, error, guarded
from agent.server.queues import ServerSettings
from agent.workflows import client as wf
from agent.workflows.engine import WorkflowEngine
from agent.workflows.graph import MAX_NODES, parse_shape

_TASK_KEYS = {"type", "payload", "queue", "max_retry", "timeout", "deadline", "process_in",
              "retention", "headers", "pass_result"}


def routes() -> list[Route]:
    return [Route("/workflows", post_workflow, methods=["POST"]),
            Route("/workflows/{workflow_id}", get_workflow, methods=["GET"])]


def _engine(request: Request) -> WorkflowEngine:
    engine = getattr(request.app.state, "workflows", None)
    if engine is None:
        engine = request.app.state.workflows = WorkflowEngine(request.app.state.broker.redis)
    return engine


def _with_defaults(settings: ServerSettings, data: Any, path: str, count: list[int]) -> Any:
    """The shape with every task's queue checked and its queue's defaults filled in."""
    if not isinstance(data, dict):
        raise ApiError(400, f"{path}: expected an object (a task, a chain or a group)")
    if "chain" in data or "group" in data:
        kind = "chain" if "chain" in data else "group"
        items = data[kind]
        if not isinstance(items, list) or not items:
            raise ApiError(400, f"{path}.{kind}: expected a non-empty list")
        out = {kind: [_with_defaults(settings, x, f"{path}.{kind}[{i}]", count) for i, x in enumerate(items)]}
        if data.get("then") is not None:
            out["then"] = _with_defaults(settings, data["then"], f"{path}.then", count)
        extra = sorted(set(data) - {kind, "then", "workflow_id"})
        if extra:
            raise ApiError(400, f"{path}.{extra[0]}: unknown field beside {kind}")
        return out
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ApiError(400, f"a workflow has at most {MAX_NODES:,} tasks")
    unknown = sorted(set(data) - _TASK_KEYS - {"depends_on", "workflow_id"})
    if unknown:
        raise ApiError(400, f"{path}.{unknown[0]}: unknown field; a task takes {', '.join(sorted(_TASK_KEYS))}")
    task = {k: v for k, v in data.items() if k in _TASK_KEYS}
    try:
        queue, qdef = _resolve_queue(settings, task.get("queue"))
    except ApiError as exc:
        raise ApiError(exc.status, f"{path}.queue: {exc.message}") from None
    task["queue"] = queue
    task.setdefault("max_retry", qdef.defaults.max_retry)
    task.setdefault("retention", qdef.defaults.retention or 86400)
    if qdef.defaults.timeout and "deadline" not in task:
        task.setdefault("timeout", qdef.defaults.timeout)
    return task


@guarded("enqueue")
async def post_workflow(request: Request) -> Response:
    settings: ServerSettings = request.app.state.settings
    body = await _json_body(request)
    workflow_id = body.get("workflow_id")
    if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id.strip()
                                    or len(workflow_id) > 128 or "{" in workflow_id or "}" in workflow_id):
        return error(400, "workflow_id must be a non-empty string of at most 128 characters, without braces")
    depends_on = body.get("depends_on")
    shape_json = _with_defaults(settings, body, "workflow", [0])
    engine = _engine(request)
    try:
        if depends_on is not None:
            if "chain" in body or "group" in body:
                return error(400, "depends_on goes with one task (type, payload, queue, ...)")
            options = {k: v for k, v in shape_json.items() if k not in ("type", "payload", "pass_result")}
            info = await wf.enqueue_after(engine, shape_json.get("type"), shape_json.get("payload"),
                                          depends_on, options)
            tasks = [{"id": info.id, "queue": info.queue}]
            wid = info.id.rpartition(":")[0]
        else:
            created = await wf.create(engine, parse_shape(shape_json), workflow_id)
            wid = created.id
            tasks = [{"id": t, "queue": q} for t, q in zip(created.task_ids, created.queues, strict=True)]
    except ValueError as exc:
        return error(409 if "exists already" in str(exc) else 400, str(exc))
    except TaskNotFoundError as exc:  # a (queue, id) dependency that is not there
        return error(404, str(exc))
    return JSONResponse({"id": wid, "state": "running", "tasks": tasks}, status_code=201)


@guarded("read")
async def get_workflow(request: Request) -> Response:
    workflow_id = request.path_params["workflow_id"]
    view = await _engine(request).show(workflow_id)
    if view is None:
        return error(404, f"no workflow {workflow_id!r} (unknown, or finished more than 7 days ago)")
    return JSONResponse(view)
