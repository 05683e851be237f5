"""Registration with the control server: ``POST {server.url}/worker/register``.

One request per parent queue, parents in alphabetical order (as runqy does), each with
``Authorization: Bearer <api_key>`` and the body ``{"queue", "hostname", "os", "version"}``.

Retries: transport errors, HTTP 5xx, 408 and 429 are retried up to ``bootstrap.retries``
attempts in all, sleeping ``retry_delay * 2**(n-1)`` (capped at 30 s) with jitter (each sleep is
a random value between half and all of that; a ``Retry-After`` header is honoured up to 60 s).
401/403 (key rejected), 404 (unknown queue), other 4xx and invalid answers are not retried:
they will not get better by asking again.

Answers accepted (runqy's shape, §3.3 of the reference, plus a few spellings of ours)::

    {"redis": {"addr": "host:6379", "password": "...", "db": 0, "use_tls": false}
              | {"url": "redis://host:6379/0", "password": "..."} | "redis://host:6379/0",
     "queue": {"name": "inference", "priority": 10},                  # optional
     "sub_queues": [{"name": "inference.high", "priority": 6}, ...]   # or {"high": 6, ...}
     "deployment": {"git_url", "branch", "commit", "code_path", "startup_cmd", "mode",
                    "startup_timeout_secs", "env_vars", "processes", "requirements",
                    "redis_storage", "vaults"},
     "flow": {...}, "aggregation": {"grace_period", "max_delay", "max_size", "aggregate",
                                    "task_type"},                  # optional
     "vaults": {"NAME": "value"}, "secrets": {"NAME": "value"}, "git_token": "..."}

Sub-queue names may be full (``inference.high``) or short (``high``); with no sub-queues the
single queue ``<parent>.default`` with ``queue.priority`` is used (old runqy servers).

Usage (from asyncio code; ``register_sync`` for other code)::

    registration = await register(config)
    redis = Redis.from_url(registration.redis.url, **registration.redis.kwargs)
"""

from __future__ import annotations

import asyncio
import logging
import math
import platform
import random
import re
import shlex
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from agent import __version__
from agent.bootstrap.errors import (
    BadResponseError,
    BootstrapError,
    KeyRejectedError,
    RegistrationError,
    ServerError,
    ServerUnreachableError,
    UnexpectedStatusError,
    UnknownQueueError,
)
from agent.bootstrap.labels import keep_labelled
from agent.bootstrap.models import (
    MODES,
    DeploymentSpec,
    QueueRegistration,
    RedisConnection,
    Registration,
)
from agent.config.aggregation import Aggregation, parse_aggregation
from agent.config.flow import FLOW_KEYS, FlowLimits, parse_flow
from agent.config.limits import MAX_QUEUES, queue_name_problem
from agent.config.model import Config, RedisConfig, Secret
from agent.config.placement import parse_labels
from agent.config.values import Invalid
from agent.logs import redact, register_secret

__all__ = [
    "REGISTER_PATH", "backoff_delay", "group_queues", "parse_answer", "register",
    "register_queue", "register_sync",
]

log = logging.getLogger(__name__)

REGISTER_PATH = "/worker/register"
REQUEST_TIMEOUT = 30.0  #: seconds per attempt, as runqy
MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 60.0
DEFAULT_STARTUP_TIMEOUT = 60.0
_RETRY_STATUSES = frozenset({408, 429})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA = re.compile(r"[0-9a-fA-F]{4,64}")

Sleep = Callable[[float], Awaitable[Any]]


# -- the whole bootstrap answer ------------------------------------------------------------

async def register(config: Config, *, hostname: str | None = None, version: str | None = None,
                   transport: httpx.AsyncBaseTransport | None = None,
                   timeout: float = REQUEST_TIMEOUT, sleep: Sleep = asyncio.sleep) -> Registration:
    """Register every configured parent queue and combine the answers.

    Raises a :class:`~agent.bootstrap.errors.RegistrationError` subclass (a
    :class:`BootstrapError` for a config without server URL, key or queues).
    """
    url = _endpoint(config)
    api_key = config.server.api_key
    if api_key is None or not api_key.reveal():
        raise BootstrapError("server.api_key is not set: the control server needs a worker API key")
    register_secret(api_key.reveal())
    wanted = group_queues(q.name for q in config.worker.queues)
    if not wanted:
        raise BootstrapError("worker.queues is empty: name at least one queue to register for")

    body = {"hostname": hostname or _hostname(), "os": platform.system().lower() or "unknown",
            "version": version or __version__}
    answers: dict[str, tuple[RedisConnection, QueueRegistration, list[str]]] = {}
    async with httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False,
                                 headers={"User-Agent": f"rundown-agent/{__version__}"}) as client:
        for parent in sorted(wanted):
            data = await register_queue(
                client, url, api_key.reveal(), parent, body=body,
                attempts=config.bootstrap.retries, retry_delay=config.bootstrap.retry_delay, sleep=sleep)
            warnings: list[str] = []
            redis, queue = parse_answer(data, parent, url, warnings=warnings, local_redis=config.redis)
            answers[parent] = (redis, queue, warnings)
    return keep_labelled(_combine(answers, wanted), config)


def register_sync(config: Config, **kwargs: Any) -> Registration:
    """:func:`register` for code without a running event loop."""
    return asyncio.run(register(config, **kwargs))


def group_queues(names: Iterable[str]) -> dict[str, set[str] | None]:
    """Parent queue -> the configured sub-queues, or None when the bare parent is configured
    (then every sub-queue the server returns is consumed)."""
    groups: dict[str, set[str] | None] = {}
    for name in names:
        parent = name.split(".", 1)[0]
        if name == parent:
            groups[parent] = None
        elif parent not in groups:
            groups[parent] = {name}
        elif groups[parent] is not None:
            groups[parent].add(name)  # type: ignore[union-attr]
    return groups


def _combine(answers: Mapping[str, tuple[RedisConnection, QueueRegistration, list[str]]],
             wanted: Mapping[str, set[str] | None]) -> Registration:
    warnings: list[str] = []
    first = sorted(answers)[0]
    redis = answers[first][0]
    queues: dict[str, int] = {}
    for parent in sorted(answers):
        other, reg, found = answers[parent]
        warnings.extend(found)
        if other.url != redis.url or other.password != redis.password:
            warnings.append(f"queue {parent!r}: the server names another Redis ({other.display_url}) "
                            f"than for {first!r}; using {redis.display_url} for every queue")
        chosen = wanted[parent]
        if chosen is None:
            queues.update(reg.sub_queues)
            continue
        for name in sorted(chosen):
            if name in reg.sub_queues:
                queues[name] = reg.sub_queues[name]
            else:
                warnings.append(f"configured queue {name!r} is not among the server's sub-queues of "
                                f"{parent!r} ({', '.join(sorted(reg.sub_queues)) or 'none'}); skipped")
    for text in warnings:
        log.warning("%s", text)
    if not queues:
        raise RegistrationError("none of the configured queues has a sub-queue on the control server "
                                "with a positive priority; nothing to consume")
    return Registration(redis=redis, queues=queues,
                        deployments={p: a[1].deployment for p, a in answers.items()},
                        parents={p: a[1] for p, a in answers.items()}, warnings=tuple(warnings))


# -- one request, with retries -------------------------------------------------------------

async def register_queue(client: httpx.AsyncClient, url: str, api_key: str, parent: str, *,
                         body: Mapping[str, Any] | None = None, attempts: int = 3,
                         retry_delay: float = 5.0, sleep: Sleep = asyncio.sleep) -> dict[str, Any]:
    """POST the registration of one parent queue; the decoded JSON answer (a dict)."""
    attempts = max(1, attempts)
    payload = {"queue": parent, **(body or {})}
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    last_status: int | None = None
    last_reason = ""
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        retry_after: float | None = None
        try:
            response = await client.post(url, json=payload, headers=headers)
        except httpx.UnsupportedProtocol:
            raise RegistrationError(f"server.url {redact(url)!r} is not an http:// or https:// URL",
                                    url=url, queue=parent) from None
        except httpx.TransportError as exc:
            last_status, last_reason = None, _describe_transport_error(exc)
        else:
            status = response.status_code
            if status == 200:
                log.info("registered queue %s", parent, extra={
                    "server": redact(url), "attempt": attempt,
                    "duration_ms": round((time.monotonic() - started) * 1000)})
                return _decode(response, url, parent)
            detail = _detail(response)
            if status in (401, 403):
                raise KeyRejectedError(url, parent, status, detail)
            if status == 404:
                raise UnknownQueueError(url, parent, detail)
            if status < 500 and status not in _RETRY_STATUSES:
                raise UnexpectedStatusError(url, parent, status, detail)
            last_status, last_reason = status, detail
            retry_after = _retry_after(response)
        if attempt < attempts:
            delay = backoff_delay(attempt, retry_delay)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            what = f"HTTP {last_status}" if last_status else last_reason
            log.warning("registration of queue %s failed (%s); attempt %d of %d, retrying in %.1f s",
                        parent, what, attempt, attempts, delay, extra={"server": redact(url)})
            await sleep(delay)
    if last_status is not None:
        raise ServerError(url, parent, last_status, attempts, last_reason)
    raise ServerUnreachableError(url, parent, attempts, last_reason)


def backoff_delay(attempt: int, base: float, cap: float = MAX_BACKOFF,
                  rng: Callable[[], float] = random.random) -> float:
    """Sleep after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped at
    ``cap``, then jittered to between half and all of it."""
    full = min(cap, max(0.0, base) * 2 ** (attempt - 1))
    return full / 2 + rng() * full / 2


def _endpoint(config: Config) -> str:
    base = (config.server.url or "").strip()
    if not base:
        raise BootstrapError("server.url is not set: give the control server's URL "
                             "(or configure redis and deployment for local mode)")
    return base.rstrip("/") + REGISTER_PATH


def _hostname() -> str:
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


def _describe_transport_error(exc: httpx.TransportError) -> str:
    kind = {httpx.ConnectTimeout: "connect timed out", httpx.ReadTimeout: "no answer in time",
            httpx.WriteTimeout: "request could not be sent in time",
            httpx.PoolTimeout: "no connection available in time"}.get(type(exc))
    text = str(exc).strip() or type(exc).__name__
    return redact(f"{kind}: {text}" if kind else text)[:300]


def _detail(response: httpx.Response) -> str:
    """The server's error text: ``error`` / ``message`` / ``detail`` of a JSON body, or the
    body's first 200 characters on one line (redacted)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                return redact(data[key].strip())[:200]
    text = " ".join(response.text.split())
    return redact(text)[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _decode(response: httpx.Response, url: str, parent: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise BadResponseError(url, parent, "", f"the body is not JSON ({kind}, "
                               f"{len(response.content)} bytes)") from None
    if not isinstance(data, dict):
        raise BadResponseError(url, parent, "", f"expected a JSON object, got {_kind(data)}")
    return data


# -- parsing one answer --------------------------------------------------------------------

class _Reader:
    """Typed access to the answer; every failure names the field's dotted path."""

    def __init__(self, url: str, parent: str) -> None:
        self.url, self.parent = url, parent

    def fail(self, path: str, problem: str) -> BadResponseError:
        return BadResponseError(self.url, self.parent, path, problem)

    def get(self, obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...],
            required: bool = False) -> Any:
        value = obj.get(key)
        if value is None:
            if required:
                raise self.fail(path, "is required but missing")
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise self.fail(path, f"must be {expected}, got {_kind(value)}")
        return value

    def text(self, obj: Mapping[str, Any], key: str, path: str, required: bool = False) -> str | None:
        value = self.get(obj, key, path, str, required)
        if value is not None and not value.strip():
            if required:
                raise self.fail(path, "is required but empty")
            return None
        return value.strip() if value is not None else None

    def integer(self, obj: Mapping[str, Any], key: str, path: str) -> int | None:
        value = self.get(obj, key, path, (int, float, str))
        if value is None:
            return None
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            raise self.fail(path, f"must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise self.fail(path, f"must be a number, got {_kind(value)}") from None
        if not math.isfinite(number):  # JSON's NaN and Infinity, which Python's parser accepts
            raise self.fail(path, f"must be a whole number, got {value!r}")
        if number != int(number):
            raise self.fail(path, f"must be a whole number, got {value!r}")
        return int(number)

    def mapping(self, obj: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
        value = self.get(obj, key, path, dict)
        out: dict[str, str] = {}
        for name, item in (value or {}).items():
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise self.fail(f"{path}.{name}", "is not a valid environment variable name")
            if isinstance(item, (dict, list)) or item is None:
                raise self.fail(f"{path}.{name}", f"must be a string, got {_kind(item)}")
            out[name] = ("true" if item else "false") if isinstance(item, bool) else str(item)
        return out


_TYPE_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "a list",
                                bool: "true or false", int: "an integer", float: "a number"}


def parse_answer(data: Mapping[str, Any], parent: str, url: str = "", *,
                 warnings: list[str] | None = None,
                 local_redis: RedisConfig | None = None) -> tuple[RedisConnection, QueueRegistration]:
    """Validate one registration answer; every secret in it is registered for redaction.

    Raises :class:`BadResponseError` naming the first missing or invalid field.
    """
    warnings = warnings if warnings is not None else []
    read = _Reader(url, parent)
    secrets = _secrets(data, read)
    git_token = data.get("git_token")
    if git_token is not None and not isinstance(git_token, str):
        raise read.fail("git_token", f"must be a string, got {_kind(git_token)}")
    for value in [*secrets.values(), git_token]:
        register_secret(value)
    redis = _redis(data, read, local_redis)
    sub_queues = _sub_queues(data, parent, read, warnings)
    deployment = _deployment(data, parent, read, secrets, git_token or None)
    return redis, QueueRegistration(parent=parent, sub_queues=sub_queues, deployment=deployment,
                                    flow=_flow(data, read), schedule=_schedule(data, read),
                                    requires=_requires(data, read),
                                    aggregation=_aggregation(data, read))


def _aggregation(data: Mapping[str, Any], read: _Reader) -> Aggregation | None:
    """``aggregation``: the queue's group aggregation (the queues file's mapping, the same keys
    as ``worker.queues[].aggregation``); a problem names its field (``aggregation.max_size``)."""
    raw = read.get(data, "aggregation", "aggregation", dict)
    if raw is None:
        return None
    problems: list[tuple[str, str]] = []
    rule = parse_aggregation(raw, lambda path, message: problems.append((path.lstrip("."), message)), "")
    if problems:
        raise read.fail(*problems[0])
    return rule


def _requires(data: Mapping[str, Any], read: _Reader) -> tuple[str, ...]:
    """``queue.requires``: the labels an agent needs to take from the queue (worker.labels)."""
    queue = data.get("queue")
    raw = queue.get("requires") if isinstance(queue, dict) else None
    if raw is None:
        return ()
    try:
        return parse_labels(raw, "required labels")
    except Invalid as exc:
        raise read.fail("queue.requires", exc.message(raw)) from None


def _flow(data: Mapping[str, Any], read: _Reader) -> FlowLimits:
    """``flow``: the fleet-wide limits of every sub-queue (rate, max_running, key_max_running,
    types), spelled as in the queues file."""
    raw = read.get(data, "flow", "flow", dict)
    if raw is None:
        return FlowLimits()
    problems: list[tuple[str, str]] = []
    limits = parse_flow(raw, lambda path, message: problems.append((path, message)), "flow")
    unknown = sorted(str(k) for k in raw if k not in FLOW_KEYS)
    if unknown:
        problems.append((f"flow.{unknown[0]}", f"unknown key (expected {', '.join(FLOW_KEYS)})"))
    if problems:
        raise read.fail(*problems[0])
    return limits


def _schedule(data: Mapping[str, Any], read: _Reader) -> tuple[Any, ...]:
    """``schedule``: the periodic tasks of the queues file (every agent may run them)."""
    from agent.scheduler.entries import parse_schedule

    problems: list[tuple[str, str]] = []
    entries = parse_schedule(data.get("schedule"), "schedule", lambda p, m: problems.append((p, m)))
    if problems:
        raise read.fail(*problems[0])
    return entries


def _secrets(data: Mapping[str, Any], read: _Reader) -> dict[str, str]:
    """runqy's decrypted ``vaults`` map, then our ``secrets`` map (which wins on a clash)."""
    secrets = read.mapping(data, "vaults", "vaults")
    secrets.update(read.mapping(data, "secrets", "secrets"))
    return secrets


def _redis(data: Mapping[str, Any], read: _Reader, local: RedisConfig | None) -> RedisConnection:
    raw = data.get("redis")
    if raw is None:
        raise read.fail("redis", "is required but missing (the Redis connection)")
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        raise read.fail("redis", f"must be an object or a URL string, got {_kind(raw)}")
    password = read.get(raw, "password", "redis.password", str)
    register_secret(password)
    username = read.text(raw, "username", "redis.username")
    use_tls = read.get(raw, "use_tls", "redis.use_tls", bool) or False
    url = read.text(raw, "url", "redis.url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise read.fail("redis.url", "must start with redis://, rediss:// or unix://")
        if parts.password:
            password = password or unquote(parts.password)
            register_secret(password)
        if parts.username:
            username = username or unquote(parts.username)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        scheme = "rediss" if use_tls and parts.scheme == "redis" else parts.scheme
        url = urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))
    else:
        addr = read.text(raw, "addr", "redis.addr", required=True)
        assert addr is not None
        _check_addr(addr, read)
        db = read.integer(raw, "db", "redis.db") or 0
        if db < 0:
            raise read.fail("redis.db", f"must be >= 0, got {db}")
        url = f"{'rediss' if use_tls else 'redis'}://{addr}/{db}"
    tls_files: dict[str, str] = {}
    if local is not None:
        for key, path in (("ssl_ca_certs", local.tls_ca_file), ("ssl_certfile", local.tls_cert_file),
                          ("ssl_keyfile", local.tls_key_file)):
            if path is not None:
                tls_files[key] = str(path)
    return RedisConnection(url=url, password=Secret(password) if password else None,
                           username=username, tls_files=tls_files)


def _check_addr(addr: str, read: _Reader) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in addr or "@" in addr:
        raise read.fail("redis.addr", f"must be host:port, got {quote(addr, safe=':[].-_')!r}")


def _sub_queues(data: Mapping[str, Any], parent: str, read: _Reader, warnings: list[str]) -> dict[str, int]:
    queue = read.get(data, "queue", "queue", dict) or {}
    name = read.text(queue, "name", "queue.name")
    if name is not None and name.split(".", 1)[0] != parent:
        warnings.append(f"queue {parent!r}: the server's answer names queue {name!r}")
    raw = read.get(data, "sub_queues", "sub_queues", (list, dict))
    items: list[tuple[str, Any, str]] = []
    if isinstance(raw, dict):
        items = [(str(k), v, f"sub_queues.{k}") for k, v in raw.items()]
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            path = f"sub_queues[{i}]"
            if not isinstance(item, dict):
                raise read.fail(path, f"must be an object with name and priority, got {_kind(item)}")
            sub = read.text(item, "name", f"{path}.name", required=True)
            weight = item.get("priority", item.get("weight"))
            items.append((sub or "", weight, f"{path}.priority"))
    if not items:
        priority = read.integer(queue, "priority", "queue.priority")
        return {f"{parent}.default": priority if priority and priority > 0 else 1}
    if len(items) > MAX_QUEUES:
        raise read.fail("sub_queues", f"{len(items):,} sub-queues, above the limit of {MAX_QUEUES:,} per agent")
    out: dict[str, int] = {}
    for sub, weight, path in items:
        name_path = path.rsplit(".", 1)[0] + ".name" if path.endswith("priority") else path
        problem = queue_name_problem(sub)
        if problem:
            raise read.fail(name_path, problem)
        full = sub if sub == parent or sub.startswith(parent + ".") else (
            f"{parent}.{sub}" if "." not in sub else "")
        if not full or any(c.isspace() for c in full) or any(c in full for c in "{}:"):
            raise read.fail(name_path, f"{sub!r} is not a sub-queue of {parent!r} (expected {parent}.<name>)")
        number = read.integer({"w": weight}, "w", path)
        if number is None:
            raise read.fail(path, "is required but missing")
        if number <= 0:
            warnings.append(f"sub-queue {full!r} has priority {number}; only positive priorities are "
                            "consumed, so it is skipped")
            continue
        out[full] = number
    return out


def _deployment(data: Mapping[str, Any], parent: str, read: _Reader, secrets: dict[str, str],
                git_token: str | None) -> DeploymentSpec:
    dep = read.get(data, "deployment", "deployment", dict, required=True)
    git_url = read.text(dep, "git_url", "deployment.git_url", required=True)
    assert git_url is not None
    if any(c.isspace() for c in git_url):
        raise read.fail("deployment.git_url", "must not contain spaces")
    branch = read.text(dep, "branch", "deployment.branch")
    commit = read.text(dep, "commit", "deployment.commit")
    if commit is not None and not _SHA.fullmatch(commit):
        raise read.fail("deployment.commit", f"must be a commit SHA (hex), got {commit!r}")
    code_path = (read.text(dep, "code_path", "deployment.code_path") or "").strip("/")
    if code_path and (".." in code_path.split("/") or code_path.startswith("~")):
        raise read.fail("deployment.code_path", "must be a path inside the repository")
    startup_cmd = read.text(dep, "startup_cmd", "deployment.startup_cmd", required=True)
    assert startup_cmd is not None
    try:
        shlex.split(startup_cmd)
    except ValueError as exc:
        raise read.fail("deployment.startup_cmd", f"cannot be split into arguments: {exc}") from None
    mode = read.text(dep, "mode", "deployment.mode") or "long_running"
    mode = mode.replace("-", "_")
    if mode not in MODES:
        raise read.fail("deployment.mode", f"must be long_running or one_shot, got {mode!r}")
    key = "startup_timeout_secs" if "startup_timeout_secs" in dep else "startup_timeout"
    timeout = read.integer(dep, key, f"deployment.{key}")
    processes = read.integer(dep, "processes", "deployment.processes")  # None: auto
    if processes is not None and processes < 1:
        raise read.fail("deployment.processes", f"must be >= 1, got {processes}")
    requirements = read.text(dep, "requirements", "deployment.requirements")
    if requirements and (requirements.startswith("/") or ".." in requirements.split("/")):
        raise read.fail("deployment.requirements", "must be a path inside the code directory")
    redis_storage = read.get(dep, "redis_storage", "deployment.redis_storage", bool)
    token = git_token or read.text(dep, "git_token", "deployment.git_token")
    if token is not None and token.startswith("vault://"):
        raise read.fail("deployment.git_token", "is an unresolved vault reference")
    register_secret(token)
    spec = DeploymentSpec(
        queue=parent, git_url=git_url, branch=branch, commit=commit, code_path=code_path,
        startup_cmd=startup_cmd, env_vars=read.mapping(dep, "env_vars", "deployment.env_vars"),
        secrets=dict(secrets), startup_timeout=float(timeout) if timeout and timeout > 0 else DEFAULT_STARTUP_TIMEOUT,
        mode=mode, processes=processes, requirements=requirements,
        redis_storage=True if redis_storage is None else redis_storage,
        git_token=Secret(token) if token else None)
    return spec


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
