"""Templates (Jinja2, autoescaped, loaded from the package) and the filters they use."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse

from agent.server.dashboard.sampler import sparkline

MAX_SHOWN_BYTES = 64 * 1024


def utc(ts: float | int | None) -> str:
    if not ts or ts < 0:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | int | None) -> str:
    if not ts or ts < 0:
        return "-"
    delta = time.time() - ts
    word = "ago" if delta >= 0 else "from now"
    return f"{duration(abs(delta))} {word}"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def shown(data: bytes | None) -> tuple[str, str]:
    """(kind, text) of a payload or result: pretty JSON, text, or hex, cut at 64 KiB."""
    if data is None:
        return "none", ""
    cut = data[:MAX_SHOWN_BYTES]
    more = f"\n... ({len(data) - MAX_SHOWN_BYTES:,} more bytes)" if len(data) > MAX_SHOWN_BYTES else ""
    try:
        return "json", orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode()[
            :MAX_SHOWN_BYTES] + more
    except orjson.JSONDecodeError:
        pass
    try:
        return "text", cut.decode("utf-8") + more
    except UnicodeDecodeError:
        return "binary (hex)", cut.hex(" ", 2) + more


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("agent.server.dashboard", "templates"),
                             autoescape=True)
    env.filters.update(utc=utc, ago=ago, duration=duration, sparkline=sparkline)
    env.globals["shown"] = shown
    return env


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    state = request.state
    context.setdefault("caller", getattr(state, "caller", None))
    context.setdefault("csrf", getattr(state, "csrf", None) or "")
    context.setdefault("message", "")
    context["request"] = request
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
