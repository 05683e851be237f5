"""What the agent does when Redis rejects its credentials.

A rejected login (WRONGPASS, NOAUTH, an ACL user without the rights) is not an outage: asking
again with the same password cannot succeed, so it is not retried every few seconds in silence.

* Readiness fails at once with the reason (:attr:`RedisAuth.problem`; never the password).
* Server mode: the agent waits (1 s, doubling up to 60 s, with jitter; one ERROR line per
  wait) and registers with the control server again. Credentials that differ from the
  rejected ones (the server may have rotated the password) are tried at once and start a new
  count. After ``server.redis_auth_attempts`` rejections of the same credentials it gives up.
* Local mode: the config file cannot change while the agent runs, so the first rejection
  gives up, naming the key to fix.

Giving up raises :class:`RedisAuthRejected`; ``rundown-agent`` then exits with code 3.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.bootstrap.models import RedisConnection
from agent.bootstrap.register import backoff_delay
from agent.broker.connection import describe
from agent.broker.credentials import RotatingCredentials, auth_reason
from agent.logs import redact_url

__all__ = ["EXIT_CODE", "RedisAuth", "RedisAuthRejected"]

log = logging.getLogger("agent.runtime")

EXIT_CODE = 3  #: the process exit code when Redis keeps rejecting the credentials
FIRST_DELAY = 1.0
MAX_DELAY = 60.0

#: Registers with the control server again; the Redis connection of its answer.
Refresh = Callable[[], Awaitable[RedisConnection]]
#: Sleeps up to the given seconds; True when the agent was asked to stop meanwhile.
Wait = Callable[[float], Awaitable[bool]]


class RedisAuthRejected(Exception):
    """Redis keeps rejecting the credentials: the agent gives up (exit code 3)."""

    exit_code = EXIT_CODE


class RedisAuth:
    """The rejections of one agent's Redis credentials, and what to do about the next one.

    Build it with :meth:`local` or :meth:`from_server`; the agent calls :meth:`rejected` for
    each rejected connection attempt and :meth:`accepted` once Redis lets it in.
    """

    def __init__(self, url: str, origin: str, fix: str, *,
                 credentials: RotatingCredentials | None = None, refresh: Refresh | None = None,
                 attempts: int = 1) -> None:
        self.url = url
        self.origin = origin  #: where the credentials come from, for messages
        self.fix = fix  #: what the operator should change, for the final message
        self.credentials = credentials
        self.refresh = refresh
        self.attempts = attempts  #: rejections of the same credentials before giving up; 0 = never
        self.problem: str | None = None  #: the reason readiness gives while Redis rejects us
        self.rejections = 0  #: of the credentials in use
        self.steps = 0  #: waits since Redis last accepted us (the back-off grows with them)

    @classmethod
    def local(cls, url: str, key: str, has_password: bool) -> RedisAuth:
        """Local mode: credentials from the config file; the first rejection is final."""
        if has_password:
            fix = f"correct {key} and start the agent again"
        else:
            fix = ("set redis.password (or user:password@ in redis.url) and start the agent again")
        return cls(url, key if has_password else f"{key}, which gives no password", fix)

    @classmethod
    def from_server(cls, connection: RedisConnection, server_url: str, refresh: Refresh,
                    attempts: int) -> RedisAuth:
        """Server mode: credentials from the control server, asked for again after a rejection."""
        password = connection.password.reveal() if connection.password else None
        return cls(connection.url, f"the control server at {redact_url(server_url)}",
                   "fix the Redis password the control server hands out (its redis or "
                   "advertise_redis URL), or raise server.redis_auth_attempts (0 = never exit)",
                   credentials=RotatingCredentials(connection.username, password),
                   refresh=refresh, attempts=attempts)

    def client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """redis-py keyword arguments with the password and username replaced by the rotating
        credentials (without them: ``kwargs`` unchanged)."""
        if self.credentials is None:
            return dict(kwargs)
        out = {k: v for k, v in kwargs.items() if k not in ("password", "username")}
        out["credential_provider"] = self.credentials
        return out

    def rejection_text(self, exc: BaseException) -> str:
        """What readiness and the log say about a rejection (never the password)."""
        return f"Redis at {describe(self.url)} rejected the credentials from {self.origin} ({auth_reason(exc)})"

    def accepted(self) -> None:
        if self.problem is not None:
            log.info("Redis at %s accepted the credentials", describe(self.url))
        self.problem, self.rejections, self.steps = None, 0, 0

    async def rejected(self, exc: BaseException, wait: Wait) -> bool:
        """Record a rejection and wait for the next try, asking the control server again.

        Returns False when the agent was asked to stop while waiting; raises
        :class:`RedisAuthRejected` when it is time to give up.
        """
        self.rejections += 1
        self.steps += 1
        self.problem = self.rejection_text(exc)
        if self.refresh is None:
            raise RedisAuthRejected(f"{self.problem}: {self.fix}")
        if self.attempts and self.rejections >= self.attempts:
            raise RedisAuthRejected(
                f"{self.problem}: rejected {self.rejections} times, and registering again "
                f"returned the same credentials; {self.fix}")
        delay = backoff_delay(self.steps, FIRST_DELAY, MAX_DELAY)
        count = f"{self.rejections} of {self.attempts}" if self.attempts else f"{self.rejections}"
        log.error("%s; registering again in %.1fs (rejection %s)", self.problem, delay, count)
        if await wait(delay):
            return False
        answer = await self.refresh()
        if answer.url != self.url:
            raise RedisAuthRejected(
                f"{self.problem}; registering again named another Redis "
                f"({describe(answer.url)}): start the agent again to use it")
        assert self.credentials is not None
        password = answer.password.reveal() if answer.password else None
        if not self.credentials.matches(answer.username, password):
            self.credentials.replace(answer.username, password)
            self.rejections = 0
            log.warning("%s handed out new Redis credentials; trying them", self.origin)
        return True
