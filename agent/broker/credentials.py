"""Redis credentials that may change while the clients live, and telling a rejected login
from an outage.

redis-py asks a client's ``credential_provider`` for the username and password every time it
opens a connection, so :class:`RotatingCredentials` lets new credentials (a password the
control server rotated) take effect on the next connection without rebuilding the clients
and everything that holds them::

    credentials = RotatingCredentials(password="...")
    client = async_client(url, credential_provider=credentials)
    credentials.replace(None, "new-password")   # the next connection logs in with it

An authentication error (wrong password, no password, or an ACL user not allowed to run the
command) is not an outage: retrying it unchanged every few seconds cannot succeed.
:func:`is_auth_error` tells the two apart; :func:`auth_reason` is its text for logs and
readiness (Redis's own words, which never contain the password).
"""

from __future__ import annotations

from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, NoPermissionError

from agent.logs import redact

__all__ = ["RotatingCredentials", "auth_reason", "is_auth_error"]

_AUTH_ERRORS = (AuthenticationError, NoPermissionError)


class RotatingCredentials(CredentialProvider):
    """Username and password read by redis-py at each new connection; :meth:`replace` swaps
    them. ``repr`` never shows the password."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self._username = username or None
        self._password = password or None

    def get_credentials(self) -> tuple[str, ...]:
        # No credentials: an empty tuple, and redis-py sends no AUTH at all.
        if self._password is None and self._username is None:
            return ()
        if self._username is None:
            return (self._password or "",)
        return self._username, self._password or ""

    async def get_credentials_async(self) -> tuple[str, ...]:
        return self.get_credentials()

    def matches(self, username: str | None, password: str | None) -> bool:
        """True when these are the credentials in use."""
        return (username or None, password or None) == (self._username, self._password)

    def replace(self, username: str | None, password: str | None) -> None:
        self._username = username or None
        self._password = password or None

    def __repr__(self) -> str:
        shown = "***" if self._password else None
        return f"RotatingCredentials(username={self._username!r}, password={shown})"


def is_auth_error(exc: BaseException) -> bool:
    """True for Redis refusing who we are (WRONGPASS, NOAUTH, NOPERM, AUTH without a password
    set), also when another error wraps it."""
    seen: BaseException | None = exc
    for _ in range(4):  # the error itself and a few levels of wrapping
        if seen is None:
            return False
        if isinstance(seen, _AUTH_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def auth_reason(exc: BaseException) -> str:
    """One line for logs and readiness: the error class and Redis's message, masked."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, _AUTH_ERRORS):
        seen = seen.__cause__ or seen.__context__
    error = seen or exc
    text = " ".join(str(error).split()) or "no message"
    return redact(f"{type(error).__name__}: {text}")[:300]
