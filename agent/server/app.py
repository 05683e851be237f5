"""The control server's HTTP API (Starlette). ``create_app(settings)`` builds it.

=======  ==============================  ========  ================================================
method   path                            role      what
=======  ==============================  ========  ================================================
POST     /worker/register                worker    Redis, sub-queues, deployment, secrets of a queue
POST     /tasks                          client    enqueue one task (asynq format, via the Broker)
POST     /tasks/batch                    client    enqueue up to 1000 tasks in one round trip
GET      /tasks/{id}[?queue=&wait=]      client    a task's state and result (``wait``: long poll)
GET      /queues                         client    stats of every queue
GET      /queues/{queue}                 client    stats of one queue
POST     /queues/{queue}/pause|unpause   admin     pause / resume a queue (asynq's paused key)
GET      /dashboard/...                  read      the operations dashboard (agent/server/dashboard)
GET      /openapi.json                   public    the OpenAPI 3.1 document
GET      /healthz                        public    Redis reachable?
=======  ==============================  ========  ================================================

``admin`` may call everything. Errors are JSON ``{"error": "..."}``. Request bodies are
limited to ``settings.max_body_bytes`` (413 beyond). Tasks are written through
``agent.broker.Broker``, so they are exactly what ``asynq.Client`` would write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import redis.exceptions
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.broker import Broker, DuplicateTaskError, EnqueueOptions, TaskIDConflictError
from agent.broker import keys as asynq_keys
from agent.broker.errors import TaskNotFoundError
from agent.broker.options import EnqueueResult
from agent.broker.taskinfo import FINAL_STATES, TaskInfo
from agent.logs import redact, redact_url
from agent.server.auth import ALLOWED, authenticate, presented_key
from agent.server.dashboard import Sampler, dashboard_routes
from agent.server.openapi import openapi_document
from agent.server.queues import QueueDef, ServerSettings

__all__ = ["create_app", "redis_block"]

log = logging.getLogger("server")

MAX_BATCH = 1000
MAX_WAIT = 60.0
MAX_HEADERS = 64  #: entries of a task's headers map
MAX_HEADERS_BYTES = 16 * 1024  #: UTF-8 bytes of its keys and values together
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def create_app(settings: ServerSettings, *, broker: Broker | None = None,
               on_ready: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app. Without ``broker`` one is made from ``settings.redis_url`` at startup;
    ``on_ready`` is called at the end of the startup (the CLI prints its URL there)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = broker is None
        app.state.broker = broker or Broker.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        try:
            await asyncio.wait_for(app.state.broker.redis.ping(), timeout=3.0)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("Redis at %s is not reachable yet (%s); /healthz reports it",
                        redact_url(settings.redis_url), redact(type(exc).__name__))
        log.info("control server ready", extra={
            "queues": sorted(settings.all_queues), "redis": redact_url(settings.redis_url)})
        app.state.dashboard_sampler = Sampler(app.state.broker.redis, lambda: list(settings.all_queues))
        app.state.dashboard_sampler.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await app.state.dashboard_sampler.stop()
            if own:
                await app.state.broker.close()

    app = Starlette(
        routes=[
            Route("/worker/register", register, methods=["POST"]),
            Route("/workers/handshake", register, methods=["POST"]),  # runqy's swagger alias
            Route("/tasks", enqueue, methods=["POST"]),
            Route("/tasks/batch", enqueue_batch, methods=["POST"]),
            Route("/tasks/{task_id}", get_task, methods=["GET"]),
            Route("/queues", list_queues, methods=["GET"]),
            Route("/queues/{queue}", get_queue, methods=["GET"]),
            Route("/queues/{queue}/pause", pause_queue, methods=["POST"]),
            Route("/queues/{queue}/unpause", unpause_queue, methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", lambda request: RedirectResponse("/dashboard/", status_code=307)),
            *dashboard_routes(),
            *_workflow_routes(),
        ],
        middleware=[Middleware(BodyLimit, max_bytes=settings.max_body_bytes)],
        exception_handlers={HTTPException: _http_error, ApiError: _api_error,
                            redis.exceptions.RedisError: _redis_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def _workflow_routes() -> list[Route]:
    from agent.server.workflows import routes  # it imports this module's helpers

    return routes()


# -- plumbing ------------------------------------------------------------------------------

def guarded(permission: str) -> Callable[[Handler], Handler]:
    """Require an API key whose role allows ``permission``."""
    roles = ALLOWED[permission]

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            settings: ServerSettings = request.app.state.settings
            caller = authenticate(settings.api_keys, presented_key(request))
            if caller is None:
                return error(401, "missing or unknown API key: send Authorization: Bearer <key>",
                             **{"WWW-Authenticate": "Bearer"})
            if caller.role not in roles:
                return error(403, f"the key {caller.name!r} has role {caller.role!r}; this needs "
                                  f"{' or '.join(sorted(roles))}")
            request.state.caller = caller
            return await handler(request)
        return endpoint
    return wrap


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail or "error")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error(exc.status, exc.message)


async def _redis_error(request: Request, exc: Exception) -> Response:
    log.warning("redis error: %s", redact(str(exc)))
    return error(503, f"Redis is unavailable: {redact(type(exc).__name__)}", **{"Retry-After": "1"})


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 to a request whose body is larger than ``max_bytes`` (by Content-Length, or
    counted while it streams in)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = error(413, f"the request body is larger than {self.max_bytes} bytes")
        await response(
            {"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
    return {"type": "http.disconnect"}


# -- registration --------------------------------------------------------------------------

def redis_block(url: str) -> dict[str, Any]:
    """The register answer's ``redis`` object (runqy's shape) for a Redis URL."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else ""
    if parts.scheme == "unix":
        netloc = parts.hostname or ""
        return {"url": f"unix://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else ""),
                "password": password}
    host = parts.hostname or "127.0.0.1"
    db_text = parts.path.lstrip("/") or dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
    block: dict[str, Any] = {
        "addr": f"[{host}]:{parts.port or 6379}" if ":" in host else f"{host}:{parts.port or 6379}",
        "password": password, "db": int(db_text) if db_text.isdigit() else 0,
        "use_tls": parts.scheme == "rediss"}
    if parts.username:
        block["username"] = unquote(parts.username)
    return block


@guarded("register")
async def register(request: Request) -> Response:
    settings: ServerSettings = request.app.state.settings
    body = await _json_body(request)
    name = body.get("queue")
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        return error(400, "queue is required: the parent queue name (a string)")
    parent = name.strip().split(".", 1)[0]
    queue = settings.queues.get(parent)
    if queue is None:
        return error(404, f"unknown queue {parent!r}; this server has {', '.join(sorted(settings.queues))}")
    log.info("worker registered", extra={
        "queue": parent, "hostname": str(body.get("hostname", ""))[:200],
        "os": str(body.get("os", ""))[:50], "version": str(body.get("version", ""))[:50],
        "key": request.state.caller.name})
    return JSONResponse(registration_answer(settings, queue))


def registration_answer(settings: ServerSettings, queue: QueueDef) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "redis": redis_block(settings.advertise_redis or settings.redis_url),
        "queue": {"name": queue.name, "priority": queue.priority,
                  **({"requires": list(queue.requires)} if queue.requires else {})},
        "sub_queues": [{"name": n, "priority": p} for n, p in queue.sub_queues.items()],
        **({"schedule": [e.to_dict() for e in settings.schedule]} if settings.schedule else {}),
        "deployment": dict(queue.deployment),
        "vaults": dict(queue.secrets),
    }
    if queue.git_token:
        answer["git_token"] = queue.git_token
    if queue.flow:
        answer["flow"] = queue.flow.as_dict()  # every agent of the queue enforces the same limits
    if queue.aggregation is not None:
        answer["aggregation"] = queue.aggregation.as_dict()  # its agents aggregate its groups
    return answer


# -- enqueue -------------------------------------------------------------------------------

def _resolve_queue(settings: ServerSettings, name: Any) -> tuple[str, QueueDef]:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "queue is required (a configured queue or sub-queue name)")
    known = settings.all_queues
    for candidate in (name, f"{name}.default"):
        if candidate in known:
            return candidate, settings.queues[known[candidate][0]]
    raise ApiError(404, f"unknown queue {name!r}; known queues: {', '.join(sorted(known))}")


def _number(body: dict[str, Any], key: str, *, minimum: float | None = None, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {type(value).__name__}")
    if integer and value != int(value):
        raise ApiError(400, f"{key} must be a whole number")
    if minimum is not None and value < minimum:
        raise ApiError(400, f"{key} must be >= {minimum:g}")
    return int(value) if integer else value


_TASK_FIELDS = frozenset({"type", "payload", "payload_base64", "queue", "task_id", "max_retry", "timeout",
                          "deadline", "process_in", "process_at", "unique", "retention", "group", "headers"})


def _headers(value: Any) -> dict[str, str]:
    """asynq's ``TaskMessage.headers`` (map<string, string>): string keys and values, bounded."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"headers must be an object of string keys and string values, "
                            f"got {type(value).__name__}")
    if len(value) > MAX_HEADERS:
        raise ApiError(400, f"headers has {len(value)} entries, above the limit of {MAX_HEADERS}")
    size = 0
    for key, item in value.items():
        shown = key[:60]
        if not key:
            raise ApiError(400, "headers: a header name must not be empty")
        if not isinstance(item, str):
            raise ApiError(400, f"headers[{shown!r}] must be a string, got {type(item).__name__}")
        try:
            size += len(key.encode()) + len(item.encode())
        except UnicodeEncodeError:
            raise ApiError(400, f"headers[{shown!r}] is not valid UTF-8 text") from None
    if size > MAX_HEADERS_BYTES:
        raise ApiError(400, f"headers holds {size:,} bytes of names and values, above the limit of "
                            f"{MAX_HEADERS_BYTES:,}")
    return dict(value)


def _parse_task(settings: ServerSettings, body: dict[str, Any]) -> tuple[str, bytes | None, EnqueueOptions]:
    unknown = sorted(set(body) - _TASK_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; expected {', '.join(sorted(_TASK_FIELDS))}")
    task_type = body.get("type")
    if not isinstance(task_type, str) or not task_type.strip():
        raise ApiError(400, "type is required: the task type (a non-empty string)")
    queue, qdef = _resolve_queue(settings, body.get("queue"))
    if "payload" in body and "payload_base64" in body:
        raise ApiError(400, "give payload or payload_base64, not both")
    payload: bytes | None = None
    if body.get("payload_base64") is not None:
        try:
            payload = base64.b64decode(str(body["payload_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "payload_base64 is not valid base64") from None
    elif "payload" in body:
        payload = orjson.dumps(body["payload"])
    task_id = body.get("task_id")
    if task_id is not None and (not isinstance(task_id, str) or not task_id.strip() or len(task_id) > 200):
        raise ApiError(400, "task_id must be a non-empty string of at most 200 characters")
    group = body.get("group")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ApiError(400, "group must be a non-empty string")
    unique = body.get("unique")
    if unique is True:
        raise ApiError(400, "unique must be the lock's lifetime in seconds (>= 1), e.g. 3600")
    defaults = qdef.defaults
    timeout = _number(body, "timeout", minimum=1)
    deadline = _number(body, "deadline", minimum=0)
    if timeout is None and deadline is None:
        timeout = defaults.timeout
    max_retry = _number(body, "max_retry", minimum=0, integer=True)
    retention = _number(body, "retention", minimum=0)
    options = EnqueueOptions(
        queue=queue, task_id=task_id,
        max_retry=defaults.max_retry if max_retry is None else max_retry,
        timeout=timeout, deadline=deadline,
        process_in=_number(body, "process_in", minimum=0), process_at=_number(body, "process_at", minimum=0),
        unique_ttl=_number(body, "unique", minimum=1),
        retention=defaults.retention if retention is None else retention, group=group,
        headers=_headers(body.get("headers")))
    try:
        options.validate()
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return task_type.strip(), payload, options


def _enqueued(result: EnqueueResult, task_type: str) -> dict[str, Any]:
    msg = result.message
    return {"id": result.id, "queue": result.queue, "type": task_type, "state": result.state,
            "process_at": result.process_at, "max_retry": msg.retry, "timeout": msg.timeout,
            "deadline": msg.deadline, "retention": msg.retention,
            "unique_key": msg.unique_key or None}


def _enqueue_error(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, (TaskIDConflictError, DuplicateTaskError)):
        return 409, str(exc)
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, ValueError):
        return 400, str(exc)
    raise exc


_producer: Any = None  # agent.tracing.producer once imported; False without opentelemetry


def _trace_enqueue(request: Request, task_type: str, options: EnqueueOptions) -> Any:
    """The enqueue span (docs/tracing.md): the request's W3C ``traceparent`` is its parent,
    and its context goes into the task's headers."""
    global _producer
    if _producer is None:
        from agent.tracing import producer

        _producer = producer if producer.available() else False
    if _producer is False:
        return None
    return _producer.start_for_request(task_type, options.queue, options.headers, request.headers)


def _traced_end(span: Any, outcome: Any) -> None:
    if span is not None:
        _producer.finish(span, outcome if isinstance(outcome, str) else None,
                         outcome if isinstance(outcome, BaseException) else None)


@guarded("enqueue")
async def enqueue(request: Request) -> Response:
    settings: ServerSettings = request.app.state.settings
    body = await _json_body(request)
    task_type, payload, options = _parse_task(settings, body)
    broker: Broker = request.app.state.broker
    span = _trace_enqueue(request, task_type, options)
    try:
        result = await broker.enqueue(task_type, payload, options)
    except (TaskIDConflictError, DuplicateTaskError, ValueError) as exc:
        _traced_end(span, exc)
        status, message = _enqueue_error(exc)
        return error(status, message)
    except Exception as exc:
        _traced_end(span, exc)
        raise
    _traced_end(span, result.id)
    return JSONResponse(_enqueued(result, task_type), status_code=201)


@guarded("enqueue")
async def enqueue_batch(request: Request) -> Response:
    settings: ServerSettings = request.app.state.settings
    body = await _json_body(request)
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return error(400, "tasks is required: a non-empty list of task objects")
    if len(tasks) > MAX_BATCH:
        return error(400, f"at most {MAX_BATCH} tasks per batch, got {len(tasks)}")
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    planned: list[tuple[int, tuple[str, bytes | None, EnqueueOptions]]] = []
    for i, item in enumerate(tasks):
        try:
            if not isinstance(item, dict):
                raise ApiError(400, "each task must be a JSON object")
            planned.append((i, _parse_task(settings, item)))
        except ApiError as exc:
            results[i] = {"error": exc.message, "status": exc.status}
    if planned:
        broker: Broker = request.app.state.broker
        spans = [_trace_enqueue(request, t, o) for _, (t, _, o) in planned]
        outcomes = await broker.enqueue_many([p for _, p in planned])
        for span, outcome in zip(spans, outcomes, strict=True):
            _traced_end(span, outcome.id if isinstance(outcome, EnqueueResult) else outcome)
        for (i, (task_type, _, _)), outcome in zip(planned, outcomes, strict=True):
            if isinstance(outcome, EnqueueResult):
                results[i] = _enqueued(outcome, task_type)
            else:
                status, message = _enqueue_error(outcome)
                results[i] = {"error": message, "status": status}
    failed = sum(1 for r in results if r is not None and "error" in r)
    return JSONResponse({"enqueued": len(tasks) - failed, "failed": failed, "results": results})


# -- reading tasks and queues --------------------------------------------------------------

def _decoded(name: str, data: bytes | None) -> dict[str, Any]:
    if not data:
        return {name: None}
    try:
        return {name: orjson.loads(data)}
    except orjson.JSONDecodeError:
        pass
    try:
        return {name: data.decode("utf-8"), f"{name}_encoding": "text"}
    except UnicodeDecodeError:
        return {name: base64.b64encode(data).decode(), f"{name}_encoding": "base64"}


def task_view(info: TaskInfo) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": info.id, "queue": info.queue, "type": info.type, "state": info.state,
        "retried": info.retried, "max_retry": info.max_retry, "last_error": info.last_error or None,
        "last_failed_at": info.last_failed_at or None, "completed_at": info.completed_at or None,
        "next_process_at": info.next_process_at or None, "headers": info.headers,
        "progress": info.progress}
    view.update(_decoded("payload", info.payload))
    view.update(_decoded("result", info.result))
    return view


async def _known_queues(request: Request) -> list[str]:
    settings: ServerSettings = request.app.state.settings
    broker: Broker = request.app.state.broker
    names = list(settings.all_queues)
    extra = sorted(q.decode() for q in await broker.redis.smembers(asynq_keys.ALL_QUEUES))
    return names + [q for q in extra if q not in settings.all_queues]


async def _find_task(request: Request, task_id: str, queue: str | None) -> TaskInfo | None:
    broker: Broker = request.app.state.broker
    candidates = [queue] if queue else await _known_queues(request)
    async with broker.redis.pipeline(transaction=False) as pipe:
        for q in candidates:
            pipe.exists(asynq_keys.task_key(q, task_id))
        found = await pipe.execute()
    for q, exists in zip(candidates, found, strict=True):
        if exists:
            try:
                return await broker.get_task(q, task_id)
            except TaskNotFoundError:
                return None
    return None


@guarded("read")
async def get_task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    queue = request.query_params.get("queue") or None
    wait_text = request.query_params.get("wait", "0")
    try:
        wait = min(MAX_WAIT, max(0.0, float(wait_text)))
    except ValueError:
        return error(400, f"wait must be a number of seconds (at most {MAX_WAIT:g}), got {wait_text!r}")
    deadline = time.monotonic() + wait
    seen: TaskInfo | None = None
    pause = 0.02
    while True:
        info = await _find_task(request, task_id, queue or (seen.queue if seen else None))
        if info is None and seen is not None:
            # asynq deletes a task that succeeded without retention.
            return JSONResponse({"id": task_id, "queue": seen.queue, "type": seen.type, "state": "deleted"})
        if info is not None and (info.state in FINAL_STATES or time.monotonic() >= deadline):
            view = task_view(info)
            if not request.state.caller.payloads:  # a readonly key without payloads: true
                view.update(payload=None, result=None, payloads_hidden=True)
                view.pop("payload_encoding", None)
                view.pop("result_encoding", None)
            return JSONResponse(view)
        if info is None and time.monotonic() >= deadline:
            where = f"queue {queue!r}" if queue else "any queue"
            return error(404, f"task {task_id!r} not found in {where} (a task that succeeded without "
                              "retention is deleted at once; enqueue with retention to read its result)")
        seen = info or seen
        await asyncio.sleep(pause)
        pause = min(0.25, pause * 1.5)


async def queue_stats(request: Request, queue: str) -> dict[str, Any]:
    settings: ServerSettings = request.app.state.settings
    broker: Broker = request.app.state.broker
    k = asynq_keys
    async with broker.redis.pipeline(transaction=False) as pipe:
        pipe.llen(k.pending(queue))
        pipe.llen(k.active(queue))
        for zset in (k.scheduled(queue), k.retry(queue), k.archived(queue), k.completed(queue)):
            pipe.zcard(zset)
        for counter in (k.processed_total(queue), k.failed_total(queue), k.processed_day(queue),
                        k.failed_day(queue)):
            pipe.get(counter)
        pipe.exists(k.paused(queue))
        values = await pipe.execute()
    pending, active, scheduled, retry, archived, completed = (int(v) for v in values[:6])
    processed, failed, processed_today, failed_today = (int(v or 0) for v in values[6:10])
    parent, weight = settings.all_queues.get(queue, (queue.split(".", 1)[0], None))
    return {"queue": queue, "parent": parent, "weight": weight, "paused": bool(values[10]),
            "size": pending + active + scheduled + retry + archived + completed,
            "pending": pending, "active": active, "scheduled": scheduled, "retry": retry,
            "archived": archived, "completed": completed, "processed_total": processed,
            "failed_total": failed, "processed_today": processed_today, "failed_today": failed_today}


@guarded("read")
async def list_queues(request: Request) -> Response:
    stats = [await queue_stats(request, q) for q in await _known_queues(request)]
    return JSONResponse({"queues": stats})


async def _existing_queue(request: Request) -> str:
    queue = request.path_params["queue"]
    if queue not in await _known_queues(request):
        raise ApiError(404, f"unknown queue {queue!r}")
    return queue


@guarded("read")
async def get_queue(request: Request) -> Response:
    return JSONResponse(await queue_stats(request, await _existing_queue(request)))


@guarded("admin")
async def pause_queue(request: Request) -> Response:
    queue = await _existing_queue(request)
    await request.app.state.broker.pause(queue)
    log.info("queue paused", extra={"queue": queue, "key": request.state.caller.name})
    return JSONResponse({"queue": queue, "paused": True})


@guarded("admin")
async def unpause_queue(request: Request) -> Response:
    queue = await _existing_queue(request)
    await request.app.state.broker.unpause(queue)
    log.info("queue unpaused", extra={"queue": queue, "key": request.state.caller.name})
    return JSONResponse({"queue": queue, "paused": False})


# -- public --------------------------------------------------------------------------------

async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(str(request.base_url).rstrip("/")))


async def healthz(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    try:
        await asyncio.wait_for(broker.redis.ping(), timeout=2.0)
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return JSONResponse({"status": "unavailable", "redis": redact(type(exc).__name__)}, status_code=503)
    return JSONResponse({"status": "ok", "redis": "ok"})
