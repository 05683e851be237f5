"""Errors of the bootstrap: registration with the control server and code deployment.

Every message says what failed, where, and what to check; none contains a secret (tokens,
API keys and passwords are masked with ``agent.logs.redact`` before a message is built).
The CLI prints ``str(error)`` without a traceback and exits non-zero.

    BootstrapError
    ├── RegistrationError
    │   ├── ServerUnreachableError   transport failures (or 5xx/429) on every attempt
    │   ├── KeyRejectedError         401 / 403
    │   ├── UnknownQueueError        404
    │   ├── ServerError              5xx on the last attempt
    │   ├── UnexpectedStatusError    any other non-200 status (400, 413, ...)
    │   └── BadResponseError         200 but not JSON, or a field missing / invalid
    └── DeploymentError              (``previous``: the last working Deployment, if any)
        ├── GitError                 git failed (its stderr, redacted)
        │   ├── GitAuthError         credentials refused or missing
        │   └── GitRefNotFoundError  branch, tag or commit not in the repository
        ├── CodePathError            ``code_path`` is not a directory of the commit
        ├── VirtualenvError          the virtualenv could not be made
        ├── InstallError             pip failed (its last lines)
        ├── StepTimeoutError         a step ran past its timeout (it was killed)
        └── DeploymentBusyError      another process holds the deployment lock
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.logs import redact

if TYPE_CHECKING:
    from agent.bootstrap.models import Deployment

__all__ = [
    "BadResponseError", "BootstrapError", "CodePathError", "DeploymentBusyError",
    "DeploymentError", "GitAuthError", "GitError", "GitRefNotFoundError", "InstallError",
    "KeyRejectedError", "RegistrationError", "ServerError", "ServerUnreachableError",
    "StepTimeoutError", "UnexpectedStatusError", "UnknownQueueError", "VirtualenvError",
]


class BootstrapError(Exception):
    """Base class: the agent cannot start because registration or deployment failed."""


# -- registration --------------------------------------------------------------------------

class RegistrationError(BootstrapError):
    """``POST /worker/register`` did not give a usable answer. ``url`` is the endpoint."""

    def __init__(self, message: str, *, url: str = "", queue: str = "") -> None:
        super().__init__(redact(message))
        self.url = redact(url)
        self.queue = queue


class ServerUnreachableError(RegistrationError):
    def __init__(self, url: str, queue: str, attempts: int, reason: str) -> None:
        super().__init__(
            f"control server {redact(url)} unreachable after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} (queue {queue!r}): {reason}; "
            "check server.url and that the server is running",
            url=url, queue=queue)
        self.attempts = attempts


class KeyRejectedError(RegistrationError):
    def __init__(self, url: str, queue: str, status: int, detail: str = "") -> None:
        what = "unknown or missing" if status == 401 else "not allowed to register workers"
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"control server {redact(url)} rejected the API key (HTTP {status}, {what}){extra}; "
            "check server.api_key (it needs the worker or admin role)",
            url=url, queue=queue)
        self.status = status


class UnknownQueueError(RegistrationError):
    def __init__(self, url: str, queue: str, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"control server {redact(url)} does not know queue {queue!r} (HTTP 404){extra}; "
            "check worker.queues against the server's queues file",
            url=url, queue=queue)


class ServerError(RegistrationError):
    def __init__(self, url: str, queue: str, status: int, attempts: int, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"control server {redact(url)} failed with HTTP {status} after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} (queue {queue!r}){extra}; see the server's log",
            url=url, queue=queue)
        self.status = status
        self.attempts = attempts


class UnexpectedStatusError(RegistrationError):
    def __init__(self, url: str, queue: str, status: int, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"control server {redact(url)} answered HTTP {status} to the registration of queue "
            f"{queue!r}{extra}", url=url, queue=queue)
        self.status = status


class BadResponseError(RegistrationError):
    """The answer was 200 but unusable. ``field`` is the dotted path (``deployment.git_url``)."""

    def __init__(self, url: str, queue: str, field: str, problem: str) -> None:
        where = f"field {field!r} " if field else ""
        super().__init__(
            f"invalid registration answer from {redact(url)} for queue {queue!r}: {where}{problem}",
            url=url, queue=queue)
        self.field = field


# -- deployment ----------------------------------------------------------------------------

class DeploymentError(BootstrapError):
    """Deploying the code failed. The previous working deployment, if any, is untouched and
    available as ``previous`` (a :class:`~agent.bootstrap.models.Deployment`)."""

    previous: Deployment | None = None

    def __init__(self, message: str, *, secrets: Iterable[str | None] = ()) -> None:
        super().__init__(_mask(message, secrets))


class GitError(DeploymentError):
    def __init__(self, message: str, *, stderr: str = "", secrets: Iterable[str | None] = ()) -> None:
        secrets = tuple(secrets)
        super().__init__(message, secrets=secrets)
        self.stderr = _mask(stderr, secrets)


class GitAuthError(GitError):
    pass


class GitRefNotFoundError(GitError):
    pass


class CodePathError(DeploymentError):
    pass


class VirtualenvError(DeploymentError):
    pass


class InstallError(DeploymentError):
    """pip (or the project install) failed; ``output_tail`` holds pip's last lines."""

    def __init__(self, message: str, *, output_tail: str = "", secrets: Iterable[str | None] = ()) -> None:
        secrets = tuple(secrets)
        tail = _mask(output_tail, secrets)
        body = message if not tail else message + "\n" + "\n".join(f"  | {line}" for line in tail.splitlines())
        super().__init__(body, secrets=secrets)
        self.output_tail = tail


class StepTimeoutError(DeploymentError):
    def __init__(self, step: str, timeout: float, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{step} did not finish within {timeout:g} s and was stopped{extra}")
        self.step = step
        self.timeout = timeout


class DeploymentBusyError(DeploymentError):
    pass


def _mask(text: str, secrets: Iterable[str | None]) -> str:
    values = [s for s in secrets if s]
    return redact(redact(text, values)) if values else redact(text)
