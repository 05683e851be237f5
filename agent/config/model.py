"""The typed configuration: one frozen dataclass per YAML section, and :class:`Config` holding them.

Field names are the YAML keys. Durations are float seconds, sizes int bytes, paths absolute
:class:`~pathlib.Path` objects (``load_config`` resolves relative ones), secrets :class:`Secret`.
Build these with :func:`agent.config.load_config`; the defaults below are the documented ones.
"""

from __future__ import annotations

import hmac
import shlex
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from agent.logs import redact_url

from .aggregation import Aggregation
from .flow import FlowLimits
from .values import split_host_port

__all__ = [
    "DEFAULT_OPS_LISTEN", "BootstrapConfig", "Config", "DeploymentConfig", "GitConfig", "LoggingConfig", "OpsConfig",
    "QueueSpec", "RedisConfig", "RetryConfig", "Secret", "ServerConfig", "WorkerConfig",
]


class Secret:
    """A secret string that never shows itself: ``repr`` is ``'***'``, ``str`` is ``***``.

    Use :meth:`reveal` at the one place that needs the value (an HTTP header, a Redis AUTH).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The control server (server mode)."""

    url: str | None = None  #: base URL; ``/worker/register`` is appended
    api_key: Secret | None = None  #: sent as ``Authorization: Bearer <key>``
    #: Redis rejections of the same credentials from the server before the agent exits (code 3); 0 = never
    redis_auth_attempts: int = 2


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One queue to consume: ``name`` may be a sub-queue (``inference.high``)."""

    name: str
    weight: int = 1  #: relative share of dequeues (ignored with ``strict_priority``)
    concurrency: int | None = None  #: per-queue in-flight limit; None = only the global limit
    #: fleet-wide limits (rate, max_running, key_max_running, types), enforced in Redis
    flow: FlowLimits = field(default_factory=FlowLimits)
    requires: tuple[str, ...] = ()  #: labels an agent needs to take from this queue (worker.labels)
    aggregation: Aggregation | None = None  #: asynq group aggregation by the agent (config/aggregation.py)

    @property
    def parent(self) -> str:
        """The parent queue: everything before the first dot (``inference.high`` → ``inference``)."""
        return self.name.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[QueueSpec, ...] = ()
    concurrency: int = 10  #: handlers running at once across all queues
    prefetch: int = 0  #: tasks each child may hold beyond its busy slots (0-1000)
    strict_priority: bool = False  #: always drain higher-weight queues first
    shutdown_timeout: float = 8.0  #: seconds to let in-flight tasks finish on SIGTERM; 0 = requeue at once
    max_tasks_per_child: int = 0  #: recycle a child after this many tasks; 0 = never
    max_memory_per_child: int | None = None  #: recycle a child above this RSS (bytes); None = never
    labels: tuple[str, ...] = ()  #: what this agent offers (``gpu``, ``a100``); see QueueSpec.requires


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    retries: int = 3  #: registration attempts (not extra retries)
    retry_delay: float = 5.0  #: base delay in seconds; the bootstrapper adds backoff and jitter


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """Where code is deployed; the optional fields form the local deployment spec (local mode)."""

    dir: Path = Path("deployment")  #: load_config makes it absolute (config file's directory)
    git_url: str | None = None
    branch: str = "main"
    commit: str | None = None
    code_path: str = ""  #: sub-directory of the checkout holding the code
    path: Path | None = None  #: an existing directory to run directly instead of a git checkout
    startup_cmd: str | None = None  #: e.g. ``python worker.py``; see :attr:`startup_argv`
    env_vars: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 60.0
    mode: str = "long_running"  #: ``long_running`` or ``one_shot``
    processes: int | None = None  #: warm children of the deployment (long_running); None = auto
    threads: int = 1  #: sync handler threads per child (1-256)
    async_limit: int | None = None  #: async handlers at once per child; load_config sets worker.concurrency if unset
    one_shot_memory_limit: int | None = None  #: RLIMIT_AS of each one_shot child (bytes)
    one_shot_cpu_seconds: int | None = None  #: RLIMIT_CPU of each one_shot child (seconds)
    gpus: tuple[int, ...] | str | None = None  #: devices to place children on, or ``all`` (nvidia-smi -L)
    processes_per_gpu: int | None = None  #: children per device with ``gpus`` (default 1)
    one_shot_start: str = "fork"  #: ``fork`` (a warm zygote forks each task's process) or ``exec``
    one_shot_load: str = "per_task"  #: with fork: ``per_task`` @load, or ``inherit`` the zygote's
    venv: str = "auto"  #: ``auto``, ``none`` or an absolute path of a virtualenv
    requirements: str | None = None  #: relative to the code dir; None = requirements.txt if present

    @property
    def is_local(self) -> bool:
        """True when this section names code to run (``git_url`` or ``path``)."""
        return self.git_url is not None or self.path is not None

    @property
    def startup_argv(self) -> tuple[str, ...]:
        """``startup_cmd`` split like a POSIX shell would (no shell is involved)."""
        return tuple(shlex.split(self.startup_cmd)) if self.startup_cmd else ()


@dataclass(frozen=True, slots=True)
class GitConfig:
    ssh_key: Path | None = None
    token: Secret | None = None  #: HTTPS personal access token
    known_hosts: Path | None = None
    accept_new_host_keys: bool = False  #: ssh ``StrictHostKeyChecking=accept-new``


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_retry: int = 25  #: for tasks our own client / HTTP API enqueue without one


DEFAULT_OPS_LISTEN = "127.0.0.1:9465"


@dataclass(frozen=True, slots=True)
class OpsConfig:
    listen: str | None = DEFAULT_OPS_LISTEN  #: ``host:port``; None = off
    token: Secret | None = None  #: bearer token required by the ops endpoints when set
    enable_controls: bool = False  #: allow drain/resume over HTTP

    @property
    def host(self) -> str | None:
        return split_host_port(self.listen)[0] if self.listen else None

    @property
    def port(self) -> int | None:
        return split_host_port(self.listen)[1] if self.listen else None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"  #: debug, info, warning, error
    format: str = "auto"  #: auto, human, json


@dataclass(frozen=True, slots=True, repr=False)
class RedisConfig:
    """Redis for local mode: ``url``, or ``addr`` with ``password``/``db``/``use_tls``."""

    url: str | None = None  #: may embed a password: print it only through __repr__/display_url
    addr: str | None = None
    password: Secret | None = None
    db: int = 0
    use_tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.use_tls or (self.url or "").startswith("rediss")

    def connection_url(self) -> str:
        """The URL to pass to ``redis.asyncio.Redis.from_url`` (no password added to it)."""
        if self.url is not None:
            return self.url
        addr = self.addr or "localhost:6379"
        return f"{'rediss' if self.use_tls else 'redis'}://{addr}/{self.db}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``from_url``: the password and the TLS files.

        Usage: ``redis.asyncio.Redis.from_url(cfg.connection_url(), **cfg.connection_kwargs())``.
        """
        kwargs: dict[str, Any] = {}
        if self.password is not None:
            kwargs["password"] = self.password.reveal()
        if self.tls:
            for key, path in (("ssl_ca_certs", self.tls_ca_file), ("ssl_certfile", self.tls_cert_file),
                              ("ssl_keyfile", self.tls_key_file)):
                if path is not None:
                    kwargs[key] = str(path)
        return kwargs

    def url_with_password(self) -> str:
        """One URL carrying everything but the TLS files (for tools that take only a URL)."""
        url = self.connection_url()
        if self.password is None or urlsplit(url).password is not None or url.startswith("unix:"):
            return url
        scheme, rest = url.split("://", 1)
        return f"{scheme}://:{quote(self.password.reveal(), safe='')}@{rest}"

    @property
    def display_url(self) -> str:
        """``connection_url()`` with any password masked."""
        return redact_url(self.connection_url())

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={_shown(self, f.name)!r}" for f in fields(self))
        return f"RedisConfig({shown})"


def _shown(redis: RedisConfig, name: str) -> Any:
    value = getattr(redis, name)
    return redact_url(value) if name == "url" and value is not None else value


@dataclass(frozen=True, slots=True)
class Config:
    """The whole agent configuration, as returned by :func:`agent.config.load_config`."""

    server: ServerConfig = field(default_factory=ServerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    git: GitConfig = field(default_factory=GitConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    redis: RedisConfig | None = None
    #: periodic tasks (``agent.scheduler.ScheduleEntry``), from the top-level ``schedule`` list
    schedule: tuple[Any, ...] = ()
    source: Path | None = None  #: the file read, or None for environment-only configuration
    warnings: tuple[str, ...] = ()  #: non-fatal findings (deprecated keys, ignored sections)

    @property
    def local_mode(self) -> bool:
        """Local mode: Redis and the code to run come from this file, no control server."""
        return self.redis is not None and self.deployment.is_local

    def redacted_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, None, lists, dicts) with every secret as ``***``."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "warnings"}


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, RedisConfig):
        data = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        data["url"] = redact_url(value.url) if value.url else None
        return data
    if isinstance(value, DeploymentConfig):
        data = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        # Values often come from ${VAR} placeholders holding credentials for the task code.
        data["env_vars"] = {k: "***" for k in value.env_vars}
        return data
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
