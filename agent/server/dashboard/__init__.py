"""The operations dashboard of ``rundown-server`` (``/dashboard``): overview, task search,
task detail, failures grouped by error, and actions. Server-rendered Jinja2 templates with
htmx (vendored in ``static/``: no CDN, no build step). See docs/dashboard.md."""

from __future__ import annotations

from agent.server.dashboard.routes import dashboard_routes
from agent.server.dashboard.sampler import Sampler

__all__ = ["Sampler", "dashboard_routes"]
