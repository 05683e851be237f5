"""What the bootstrap produces: the parsed registration answer and the deployed code.

* :class:`RedisConnection` -- where the task queues live; the password stays out of ``url``.
* :class:`DeploymentSpec` -- what code to run for one parent queue and how (from the control
  server's answer, or from the local config with :meth:`DeploymentSpec.from_config`).
* :class:`QueueRegistration` -- one parent queue's answer: its sub-queues and deployment.
* :class:`Registration` -- the whole bootstrap answer for the configured queues.
* :class:`Deployment` -- a deployed, runnable copy of the code (see ``deploy.deploy``).

Secrets (Redis password, git token, vault values) never show in a ``repr``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.config.aggregation import Aggregation
from agent.config.flow import FlowLimits
from agent.config.model import DeploymentConfig, Secret
from agent.logs import redact_url

__all__ = ["Deployment", "DeploymentSpec", "QueueRegistration", "RedisConnection", "Registration"]

MODES = ("long_running", "one_shot")


@dataclass(frozen=True, slots=True)
class RedisConnection:
    """A Redis server to connect to.

    Usage: ``redis.asyncio.Redis.from_url(conn.url, **conn.kwargs)``. ``url`` never holds the
    password (it travels in ``kwargs``), so it can be logged as is.
    """

    url: str
    password: Secret | None = None
    username: str | None = None
    tls_files: dict[str, str] = field(default_factory=dict)  #: ssl_ca_certs / ssl_certfile / ssl_keyfile

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url`` (password, username, TLS files)."""
        out: dict[str, Any] = {}
        if self.password:
            out["password"] = self.password.reveal()
        if self.username:
            out["username"] = self.username
        if self.url.startswith("rediss"):  # rediss://, rediss+cluster://, ...
            out.update(self.tls_files)
        return out

    @property
    def use_tls(self) -> bool:
        return self.url.startswith("rediss")

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (f"RedisConnection(url={self.display_url!r}, password={'***' if self.password else None}, "
                f"username={self.username!r})")


@dataclass(frozen=True)
class DeploymentSpec:
    """The code of one parent queue: where it comes from and how to start it.

    Exactly one of ``git_url`` and ``path`` is set. With ``git_url``: ``branch`` (a branch or
    tag; None = the remote's default branch) and optionally ``commit`` (a pin; full or
    abbreviated SHA). ``code_path`` is the sub-directory holding the code. ``venv`` is
    ``auto`` (a managed virtualenv when there is something to install), ``none`` (the
    agent's interpreter) or the path of a virtualenv. ``secrets`` are environment variables
    for the child like ``env_vars`` (they win on a clash) but are never shown. ``processes`` is
    the number of warm children, or None for auto (as many as ``worker.concurrency`` needs, see
    :func:`agent.config.plan_children`).
    """

    queue: str = ""  #: the parent queue; names the deployment's directory
    git_url: str | None = None
    branch: str | None = None
    commit: str | None = None
    code_path: str = ""
    path: Path | None = None
    startup_cmd: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    startup_timeout: float = 60.0
    mode: str = "long_running"
    processes: int | None = None  #: warm children (long_running); None = auto
    venv: str = "auto"
    requirements: str | None = None  #: relative to the code dir; None = requirements.txt if present
    redis_storage: bool = True  #: runqy's flag: keep results / completion records in Redis
    git_token: Secret | None = None  #: from the server; overrides the local git.token

    def __post_init__(self) -> None:
        if (self.git_url is None) == (self.path is None):
            raise ValueError("a deployment spec needs exactly one of git_url and path")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"processes must be >= 1 (or None for auto), got {self.processes}")

    @property
    def startup_argv(self) -> tuple[str, ...]:
        """``startup_cmd`` split like a POSIX shell would (no shell is involved)."""
        return tuple(shlex.split(self.startup_cmd)) if self.startup_cmd else ()

    @property
    def source(self) -> str:
        """The git URL without any credentials in it, or the local path: safe to log and store."""
        return _without_userinfo(self.git_url) if self.git_url else str(self.path)

    @classmethod
    def from_config(cls, cfg: DeploymentConfig, queue: str = "") -> DeploymentSpec:
        """The local-mode spec from the config's ``deployment`` section."""
        return cls(
            queue=queue, git_url=cfg.git_url if cfg.path is None else None,
            branch=cfg.branch or None, commit=cfg.commit, code_path=cfg.code_path or "",
            path=cfg.path, startup_cmd=cfg.startup_cmd or "", env_vars=dict(cfg.env_vars),
            startup_timeout=cfg.startup_timeout, mode=cfg.mode, processes=cfg.processes,
            venv=cfg.venv, requirements=cfg.requirements)


def _without_userinfo(url: str) -> str:
    """``https://user:token@host/x`` and ``https://token@host/x`` -> ``https://host/x``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return redact_url(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class QueueRegistration:
    """The control server's answer for one parent queue."""

    parent: str
    sub_queues: dict[str, int]  #: every sub-queue the server returned: full name -> weight
    deployment: DeploymentSpec
    flow: FlowLimits = field(default_factory=FlowLimits)  #: fleet-wide limits of each sub-queue
    schedule: tuple[Any, ...] = ()  #: periodic tasks the server hands out (ScheduleEntry)
    requires: tuple[str, ...] = ()  #: labels an agent needs to take from this queue
    aggregation: Aggregation | None = None  #: group aggregation of each sub-queue (the queues file's)


@dataclass(frozen=True)
class Registration:
    """The bootstrap answer for all configured queues.

    * ``redis``: from the first parent (alphabetically), as runqy does.
    * ``queues``: the sub-queues to consume, full name -> weight (``{"inference.high": 6}``):
      every sub-queue of a parent configured by its bare name, else the configured ones.
    * ``deployments``: parent queue -> its :class:`DeploymentSpec`.
    * ``parents``: parent queue -> the full :class:`QueueRegistration`.
    * ``warnings``: non-fatal findings (a configured sub-queue the server does not have, ...).
    """

    redis: RedisConnection
    queues: dict[str, int]
    deployments: dict[str, DeploymentSpec]
    parents: dict[str, QueueRegistration]
    warnings: tuple[str, ...] = ()

    @property
    def flow(self) -> dict[str, FlowLimits]:
        """The server's flow limits of each queue to consume (its parent's, given to each)."""
        out = {}
        for queue in self.queues:
            parent = self.parents.get(queue.split(".", 1)[0])
            if parent is not None and parent.flow:
                out[queue] = parent.flow
        return out

    @property
    def aggregation(self) -> dict[str, Aggregation]:
        """The server's group aggregation of each queue to consume (its parent's)."""
        out = {}
        for queue in self.queues:
            parent = self.parents.get(queue.split(".", 1)[0])
            if parent is not None and parent.aggregation is not None:
                out[queue] = parent.aggregation
        return out


@dataclass(frozen=True)
class Deployment:
    """A runnable copy of a queue's code.

    ``python`` is the interpreter to start ``python ...`` commands with: the virtualenv's,
    or the agent's own when ``venv_dir`` is None. ``installed`` tells whether dependencies
    were (re)installed by this call (False on a warm restart). ``timings`` holds each step's
    duration in seconds (``fetch``, ``checkout``, ``venv``, ``install``, ``total``).
    """

    queue: str
    code_dir: Path
    venv_dir: Path | None
    python: Path
    commit: str
    installed: bool
    timings: dict[str, float] = field(default_factory=dict)
    requirements_hash: str | None = None
    source: str = ""

    @staticmethod
    def agent_python() -> Path:
        return Path(sys.executable)
