"""The ops HTTP endpoints, served by uvicorn inside the agent's event loop.

/healthz   the process and its loops are alive
/readyz    ready to take tasks: state ready, Redis answering, a dequeue succeeded recently,
           every queue's executor healthy (so a zombie consumer is never "ready")
/metrics   Prometheus text format
/status    JSON snapshot: state, queues, children, in-flight tasks
POST /drain, POST /resume   only with ops.enable_controls
Bound to 127.0.0.1 by default; with ops.token set, every endpoint needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("agent.ops")


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def build_app(*, health: Callable[[], tuple[bool, dict]], ready: Callable[[], Any],
              status: Callable[[], dict], registry, token: str | None = None,
              controls: dict[str, Callable[[], Any]] | None = None) -> Starlette:
    """``ready`` may be async (it pings Redis); the others are plain functions."""
    expected = f"Bearer {token}".encode() if token else None

    def authorised(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    def guard(handler):
        async def wrapped(request: Request) -> Response:
            if not authorised(request):
                return ORJSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            return await handler(request)
        return wrapped

    async def healthz(_: Request) -> Response:
        ok, detail = health()
        return ORJSONResponse({"ok": ok, **detail}, status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        result = ready()
        if asyncio.iscoroutine(result):
            result = await result
        ok, reasons = result
        return ORJSONResponse({"ready": ok, "reasons": reasons}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def status_(_: Request) -> Response:
        return ORJSONResponse(status())

    routes = [Route("/healthz", guard(healthz)), Route("/readyz", guard(readyz)),
              Route("/metrics", guard(metrics)), Route("/status", guard(status_))]
    for name, action in (controls or {}).items():
        async def control(_: Request, action=action, name=name) -> Response:
            result = action()
            if asyncio.iscoroutine(result):
                result = await result
            return ORJSONResponse({"action": name, "state": result})
        routes.append(Route(f"/{name}", guard(control), methods=["POST"]))
    return Starlette(routes=routes)


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the agent owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OpsServer:
    def __init__(self, app: Starlette, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = _QuietServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name="ops-http")
        for _ in range(200):
            if self.server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises the bind error
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("ops endpoints on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
