"""API keys: ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``), roles, constant time.

Every configured key is compared with ``hmac.compare_digest`` on every request (no early
exit), so the time taken says nothing about which key, or how much of one, matched.

Roles: ``worker`` may register; ``client`` may enqueue and read tasks and queue stats;
``admin`` may do everything (including pausing queues); ``readonly`` may read tasks and queue
stats (the dashboard included) but sees no payloads or results unless its key says
``payloads: true``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from agent.server.queues import ApiKey

__all__ = ["ALLOWED", "Caller", "authenticate", "presented_key"]

ALLOWED: dict[str, frozenset[str]] = {
    "register": frozenset({"worker", "admin"}),
    "read": frozenset({"client", "admin", "readonly"}),
    "enqueue": frozenset({"client", "admin"}),
    "admin": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    payloads: bool = True  #: may see task payloads and results


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


def authenticate(keys: Iterable[ApiKey], presented: str | None) -> Caller | None:
    """The caller owning ``presented`` (None when no key matches)."""
    if not presented:
        return None
    given = presented.encode()
    found: Caller | None = None
    for key in keys:
        if hmac.compare_digest(key.key.reveal().encode(), given) and found is None:
            found = Caller(key.name, key.role, key.payloads)
    return found
