"""The dashboard's pages and actions under ``/dashboard`` (server-rendered, htmx for the rest).

=======  ============================  ======  =================================================
method   path                          role    what
=======  ============================  ======  =================================================
GET      /dashboard/                   read    overview: queues, sparklines, agents (polled)
GET      /dashboard/tasks              read    task search (queue, state, type, ID prefix, error,
                                               time range), a page at a time
GET      /dashboard/task               read    one task (``?queue=&id=``), its state polled
GET      /dashboard/failures           read    failures grouped by normalised error
POST     /dashboard/tasks/action       admin   retry / archive / delete / cancel tasks
POST     /dashboard/failures/action    admin   retry / archive / delete a failure group
POST     /dashboard/queues/{q}/pause   admin   pause (``/unpause``: resume) a queue
GET|POST /dashboard/login, /logout     public  the key form; the session cookie
=======  ============================  ======  =================================================

``read`` is the client, admin and readonly roles; readonly sees no payloads or results unless
its key allows them. Fragments (``?fragment=1`` or an htmx request) return only the part
of the page htmx swaps in.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from agent.broker import Broker
from agent.server.dashboard import actions, failures, queries, search
from agent.server.dashboard import session as sessions
from agent.server.dashboard.render import page
from agent.server.queues import ServerSettings

log = logging.getLogger("server.dashboard")
Handler = Callable[[Request], Awaitable[Response]]
MAX_SELECTED = 10_000  #: tasks one "selected" action may name


def _partial(request: Request) -> bool:
    return request.headers.get("hx-request") == "true" or request.query_params.get("fragment") == "1"


def guarded(admin: bool = False) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            caller, csrf, by_bearer = sessions.identify(request)
            if caller is None:
                if by_bearer:
                    return Response("unknown API key, or its role may not use the dashboard",
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                target = "/dashboard/login?next=" + quote(request.url.path + (
                    "?" + request.url.query if request.url.query else ""))
                if request.headers.get("hx-request") == "true":
                    return Response("log in first", status_code=401, headers={"HX-Redirect": target})
                return RedirectResponse(target, status_code=303)
            request.state.caller, request.state.csrf = caller, csrf
            if request.method == "POST" and not by_bearer:
                sent = request.headers.get(sessions.CSRF_HEADER, "")
                if not csrf or not sessions.hmac.compare_digest(sent, csrf):
                    return Response("missing or wrong X-CSRF-Token (reload the page)", status_code=403)
            if admin and caller.role != "admin":
                return page(request, "_message.html", status=403,
                            message=f"the key {caller.name!r} has role {caller.role!r}: this action "
                                    "needs an admin key", error=True)
            return await handler(request)
        return endpoint
    return wrap


class Form:
    """An ``application/x-www-form-urlencoded`` body (what htmx and the login form send)."""

    def __init__(self, body: bytes) -> None:
        self.fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, [default])[0]

    def getlist(self, name: str) -> list[str]:
        return self.fields.get(name, [])


async def _form(request: Request) -> Form:
    return Form(await request.body())


def _broker(request: Request) -> Broker:
    return request.app.state.broker


async def _queues(request: Request) -> list[str]:
    settings: ServerSettings = request.app.state.settings
    return await queries.all_queues(_broker(request).redis, list(settings.all_queues))


# -- login -------------------------------------------------------------------------------

async def login_form(request: Request) -> Response:
    return page(request, "login.html", next=request.query_params.get("next", "/dashboard/"))


async def login(request: Request) -> Response:
    form = await _form(request)
    key = sessions.login(request.app.state.settings, str(form.get("key", "")))
    target = str(form.get("next") or "/dashboard/")
    if not target.startswith("/dashboard"):
        target = "/dashboard/"
    if key is None:
        return page(request, "login.html", status=401, next=target,
                    message="unknown key, or its role (worker) may not use the dashboard")
    log.info("dashboard login", extra={"key": key.name})
    response = RedirectResponse(target, status_code=303)
    sessions.set_cookie(response, request, sessions.session_value(key))
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    sessions.clear_cookie(response, request)
    return response


# -- pages -------------------------------------------------------------------------------

@guarded()
async def overview(request: Request) -> Response:
    client = _broker(request).redis
    names = await _queues(request)
    rows = await queries.queue_rows(client, names)
    sampler = request.app.state.dashboard_sampler
    context: dict[str, Any] = dict(rows=rows, rates={q: sampler.rates(q) for q in names},
                                   agents=await queries.agents(client))
    return page(request, "_overview.html" if _partial(request) else "overview.html", **context)


def _query(request: Request, names: list[str]) -> tuple[search.SearchQuery, dict[str, str]]:
    p = request.query_params
    form = {k: p.get(k, "").strip() for k in ("queue", "state", "type", "id", "error", "since", "until")}
    queue, state = form["queue"], form["state"]
    if queue and queue not in names:
        raise search.SearchError(f"unknown queue {queue[:100]!r}")
    if state and state not in search.SEARCH_STATES:
        raise search.SearchError(f"state must be one of {', '.join(search.SEARCH_STATES)}")
    query = search.SearchQuery(
        queues=(queue,) if queue else tuple(names),
        states=(state,) if state else search.SEARCH_STATES,
        type=form["type"], id_prefix=form["id"], error=form["error"],
        since=search.parse_time("since", form["since"]), until=search.parse_time("until", form["until"]))
    return query, form


@guarded()
async def tasks(request: Request) -> Response:
    names = await _queues(request)
    try:
        query, form = _query(request, names)
        size = int(request.query_params.get("size") or search.PAGE_SIZE)
        result = await search.search(_broker(request).redis, query, request.query_params.get("cursor"),
                                     size=size)
    except (search.SearchError, ValueError) as exc:
        return page(request, "_message.html" if _partial(request) else "tasks.html", status=400,
                    message=str(exc), error=True, queues=names, states=search.SEARCH_STATES,
                    form=dict(request.query_params), result=None, more="")
    params = {k: v for k, v in form.items() if v}
    more = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return page(request, "_results.html" if _partial(request) else "tasks.html", queues=names,
                states=search.SEARCH_STATES, form=form, result=result, more=more,
                task_time=search.task_time)


@guarded()
async def task_detail(request: Request) -> Response:
    client = _broker(request).redis
    task_id = request.query_params.get("id", "")
    queue = request.query_params.get("queue") or await queries.locate(client, await _queues(request), task_id)
    found = await queries.find_task(client, queue, task_id) if queue and task_id else None
    if found is None:
        return page(request, "_message.html" if _partial(request) else "task.html", status=404,
                    message=f"task {task_id[:200]!r} not found" + (f" in queue {queue!r}" if queue else ""),
                    error=True, task=None, extra={})
    task, extra = found
    return page(request, "_task.html" if _partial(request) else "task.html", task=task, extra=extra,
                task_time=search.task_time)


@guarded()
async def failure_list(request: Request) -> Response:
    names = await _queues(request)
    queue = request.query_params.get("queue", "")
    report = await failures.failure_groups(_broker(request).redis, [queue] if queue in names else names)
    return page(request, "_failures.html" if _partial(request) else "failures.html", report=report,
                queues=names, queue=queue)


# -- actions -----------------------------------------------------------------------------

@guarded(admin=True)
async def task_action(request: Request) -> Response:
    form = await _form(request)
    operation = str(form.get("op", ""))
    selected = [str(v) for v in form.getlist("task")][:MAX_SELECTED]
    pairs = [tuple(v.split("\n", 1)) for v in selected if "\n" in v]
    if not pairs:
        return page(request, "_message.html", status=400, message="no task selected", error=True)
    client = _broker(request).redis
    if operation == "cancel":
        reached = [await actions.cancel(client, task_id) for _, task_id in pairs]
        message = (f"cancel sent for {len(pairs):,} task{'s' if len(pairs) != 1 else ''} "
                   f"({max(reached)} agent{'s' if max(reached) != 1 else ''} listening)")
    elif operation in actions.OPERATIONS:
        result = await actions.apply(client, operation, pairs)  # type: ignore[arg-type]
        message = result.summary()
    else:
        return page(request, "_message.html", status=400, error=True,
                    message=f"op must be one of retry, archive, delete, cancel, got {operation[:30]!r}")
    log.info("dashboard action", extra={"op": operation, "tasks": len(pairs),
                                        "key": request.state.caller.name})
    return page(request, "_message.html", message=message, refresh=True)


@guarded(admin=True)
async def failure_action(request: Request) -> Response:
    form = await _form(request)
    operation = str(form.get("op", ""))
    if operation not in actions.OPERATIONS:
        return page(request, "_message.html", status=400, error=True,
                    message=f"op must be one of {', '.join(actions.OPERATIONS)}, got {operation[:30]!r}")
    queue, task_type, error = (str(form.get(k, "")) for k in ("queue", "type", "error"))
    client = _broker(request).redis
    members = await failures.group_members(client, queue, task_type, error)
    if operation == "archive":
        members = [m for m in members if m[1] != "archived"]
    result = await actions.apply(client, operation, [(queue, task_id) for task_id, _ in members])
    log.info("dashboard group action", extra={"op": operation, "queue": queue, "tasks": result.done,
                                              "key": request.state.caller.name})
    return page(request, "_message.html", message=result.summary(), refresh=True)


@guarded(admin=True)
async def pause_queue(request: Request) -> Response:
    queue = request.path_params["queue"]
    if queue not in await _queues(request):
        return page(request, "_message.html", status=404, message=f"unknown queue {queue!r}", error=True)
    verb = request.path_params["verb"]
    if verb not in ("pause", "unpause"):
        return page(request, "_message.html", status=404, message=f"no such action {verb[:30]!r}", error=True)
    resume = verb == "unpause"
    broker = _broker(request)
    await (broker.unpause(queue) if resume else broker.pause(queue))
    log.info("queue %s from the dashboard", "unpaused" if resume else "paused",
             extra={"queue": queue, "key": request.state.caller.name})
    return page(request, "_message.html", message=f"queue {queue} {'resumed' if resume else 'paused'}",
                refresh=True)


def dashboard_routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", lambda r: RedirectResponse("/dashboard/", status_code=307)),
        Mount("/dashboard", routes=[
            Route("/", overview),
            Route("/tasks", tasks),
            Route("/task", task_detail),
            Route("/failures", failure_list),
            Route("/tasks/action", task_action, methods=["POST"]),
            Route("/failures/action", failure_action, methods=["POST"]),
            Route("/queues/{queue}/{verb:str}", pause_queue, methods=["POST"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("agent.server.dashboard", "static")]), name="static"),
        ]),
    ]
