"""Who is using the dashboard: an API key, given once at the login form, then a session cookie.

The cookie holds no key: it is ``<key name>.<expiry>.<MAC>``, the MAC an HMAC-SHA256 keyed with
the API key itself, so it proves the key without carrying it, survives a server restart, works
behind several servers that share a queues file, and dies when the key is changed or removed.
It is ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (no other site's page can send
it) and ``Secure`` when the dashboard is served over HTTPS. Every action (a POST) also needs
the page's CSRF token in ``X-CSRF-Token``, derived from the cookie the same way. Scripts may
skip the cookie and send ``Authorization: Bearer <key>`` as to the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from starlette.requests import Request
from starlette.responses import Response

from agent.server.auth import Caller, authenticate, presented_key
from agent.server.queues import ApiKey, ServerSettings

COOKIE = "rundown_dashboard"
LIFETIME = 12 * 3600
CSRF_HEADER = "x-csrf-token"
DASHBOARD_ROLES = frozenset({"client", "admin", "readonly"})


def _mac(key: ApiKey, purpose: str, text: str) -> str:
    return hmac.new(key.key.reveal().encode(), f"{purpose}|{text}".encode(), hashlib.sha256).hexdigest()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def session_value(key: ApiKey, now: float | None = None) -> str:
    expiry = int((time.time() if now is None else now) + LIFETIME)
    body = f"{_b64(key.name)}.{expiry}"
    return f"{body}.{_mac(key, 'session', body)}"


def from_cookie(settings: ServerSettings, value: str | None) -> tuple[Caller, str] | None:
    """The caller a session cookie proves, and its CSRF token; None when invalid or expired."""
    if not value or value.count(".") != 2:
        return None
    name_b64, expiry, mac = value.split(".")
    try:
        name = _unb64(name_b64)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not expiry.isdigit() or int(expiry) < time.time():
        return None
    body = f"{name_b64}.{expiry}"
    found = None
    for key in settings.api_keys:  # every key is compared: the time says nothing
        good = hmac.compare_digest(_mac(key, "session", body), mac)
        if good and key.name == name and found is None and key.role in DASHBOARD_ROLES:
            found = key
    if found is None:
        return None
    return Caller(found.name, found.role, found.payloads), _mac(found, "csrf", value)[:32]


def login(settings: ServerSettings, presented: str) -> ApiKey | None:
    """The key matching ``presented`` if its role may use the dashboard."""
    caller = authenticate(settings.api_keys, presented.strip())
    if caller is None or caller.role not in DASHBOARD_ROLES:
        return None
    return next(k for k in settings.api_keys if k.name == caller.name and k.role == caller.role
                and hmac.compare_digest(k.key.reveal(), presented.strip()))


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=LIFETIME, path="/dashboard", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def identify(request: Request) -> tuple[Caller | None, str | None, bool]:
    """(caller, CSRF token, came by bearer key). A bearer key, when sent, decides alone."""
    settings: ServerSettings = request.app.state.settings
    presented = presented_key(request)
    if presented is not None:
        caller = authenticate(settings.api_keys, presented)
        if caller is None or caller.role not in DASHBOARD_ROLES:
            return None, None, True
        return caller, None, True
    found = from_cookie(settings, request.cookies.get(COOKIE))
    if found is None:
        return None, None, False
    return found[0], found[1], False
