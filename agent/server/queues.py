"""The queues file of ``rundown-server``: queues, sub-queues and weights, deployments, secrets,
API keys. ``agent/examples/server-queues.yml`` shows every key with a comment.

``${VAR}`` and ``${VAR:-default}`` in any string value are replaced from the environment (so
keys and secrets need not be written in the file); ``$${`` is a literal ``${``.

:func:`load_queues_file` returns a :class:`ServerSettings` or raises :class:`QueuesFileError`
listing every problem with its path (``queues.inference.deployment.git_url: is required``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config.aggregation import Aggregation, parse_aggregation
from agent.config.bounded_yaml import YamlFileError, read_yaml_file
from agent.config.capacity import MAX_PROCESSES
from agent.config.errors import MAX_REPORTED
from agent.config.flow import FLOW_KEYS, FlowLimits, parse_flow
from agent.config.limits import MAX_ENTRIES, MAX_INT32, MAX_QUEUES, MAX_WEIGHT, env_value_problem
from agent.config.model import Secret
from agent.config.placeholders import PLACEHOLDER, expand_text
from agent.config.placement import parse_labels
from agent.config.values import Invalid, printable
from agent.logs import register_secret
from agent.server.git_source import resolve_git_url

__all__ = ["ApiKey", "QueueDef", "QueuesFileError", "ROLES", "ServerSettings", "TaskDefaults",
           "load_queues_file", "parse_queues"]

ROLES = ("worker", "client", "admin", "readonly")
MODES = ("long_running", "one_shot")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DEPLOYMENT_KEYS = ("git_url", "branch", "commit", "code_path", "startup_cmd", "mode",
                    "startup_timeout_secs", "processes", "requirements", "redis_storage", "env_vars",
                    "vaults", "secrets", "git_token")


class QueuesFileError(Exception):
    """The queues file has problems; ``problems`` lists them (``path: message``)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = [printable(p, 500) for p in problems]  # keys are the file's: control characters
        count = len(problems)
        lines = [f"{source}: {count} problem{'s' if count != 1 else ''}",
                 *(f"  {p}" for p in self.problems[:MAX_REPORTED])]
        if count > MAX_REPORTED:
            lines.append(f"  ... and {count - MAX_REPORTED} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: Secret
    role: str  #: worker (register), client (enqueue, read), admin (everything), readonly (read)
    payloads: bool = True  #: may read task payloads and results (``payloads: false`` hides them)


@dataclass(frozen=True)
class TaskDefaults:
    """Options the enqueue API uses when a request does not give them."""

    max_retry: int = 25
    timeout: float | None = None  #: None: asynq's default (30 min) unless a deadline is given
    retention: float = 86400.0  #: keep finished tasks (and results) this long; 0: delete on success


@dataclass(frozen=True)
class QueueDef:
    """One parent queue. ``sub_queues`` maps full Redis queue names to weights, highest first."""

    name: str
    sub_queues: dict[str, int]
    deployment: dict[str, Any]  #: the register answer's ``deployment`` block (no secrets)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    git_token: str | None = field(default=None, repr=False)
    defaults: TaskDefaults = field(default_factory=TaskDefaults)
    flow: FlowLimits = field(default_factory=FlowLimits)  #: fleet-wide limits of each sub-queue
    requires: tuple[str, ...] = ()  #: labels an agent needs to take from this queue (worker.labels)
    aggregation: Aggregation | None = None  #: group aggregation by the agents of each sub-queue

    @property
    def priority(self) -> int:
        return max(self.sub_queues.values())


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server serves. ``redis_url`` is the server's own Redis connection;
    ``advertise_redis`` what workers are told (default: the same)."""

    queues: dict[str, QueueDef]
    api_keys: tuple[ApiKey, ...]
    redis_url: str = "redis://127.0.0.1:6379/0"
    advertise_redis: str | None = None
    max_body_bytes: int = 1 << 20
    source: str = "queues file"
    warnings: tuple[str, ...] = ()  #: findings that do not stop the server (keys written in the file)
    schedule: tuple[Any, ...] = ()  #: periodic tasks (agent.scheduler.ScheduleEntry) for every agent

    def with_redis(self, url: str) -> ServerSettings:
        """The same settings served from the Redis at ``url`` (``--local-redis``)."""
        return replace(self, redis_url=url)

    @property
    def all_queues(self) -> dict[str, tuple[str, int]]:
        """Every Redis queue name -> (parent, weight)."""
        return {sub: (q.name, w) for q in self.queues.values() for sub, w in q.sub_queues.items()}


def load_queues_file(path: Path | str, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
    """Read and validate a queues file; ``overrides`` set ServerSettings fields (from the CLI)."""
    path = Path(path)
    try:
        data = read_yaml_file(path)
    except YamlFileError as exc:
        where = f" (line {exc.line}, column {exc.column})" if exc.line is not None else ""
        problem = f"not valid YAML{where}: {exc.problem}" if exc.syntax else exc.reason
        raise QueuesFileError(str(path), [problem]) from None
    return parse_queues(data, source=str(path), environ=environ, base_dir=path.parent, **overrides)


def parse_queues(data: Any, *, source: str = "queues file", environ: Mapping[str, str] | None = None,
                 base_dir: Path | None = None, **overrides: Any) -> ServerSettings:
    """Validate an already parsed queues document (see :func:`load_queues_file`); ``base_dir``
    anchors relative ``git_url`` paths (default: the working directory)."""
    problems: list[str] = []
    environ = os.environ if environ is None else environ
    warnings = _keys_in_file(data, environ, source)
    data = _expand(data, environ, problems, "")
    if problems:  # unset variables first: the values they leave empty would only add noise
        raise QueuesFileError(source, problems)
    if not isinstance(data, dict):
        raise QueuesFileError(source, ["the file must be a mapping with a queues section"])
    for key in data:
        if key not in ("queues", "api_keys", "vaults", "advertise_redis", "redis", "max_body_bytes",
                       "schedule"):
            problems.append(f"{key}: unknown key (expected queues, api_keys, vaults, advertise_redis, "
                            "redis, max_body_bytes, schedule)")
    vaults = _vaults(data.get("vaults"), problems)
    from agent.scheduler.entries import parse_schedule  # periodic tasks, handed to every agent

    settings_schedule = parse_schedule(data.get("schedule"), "schedule",
                                       lambda path, message: problems.append(f"{path}: {message}"))
    keys = _api_keys(data.get("api_keys"), problems)
    queues: dict[str, QueueDef] = {}
    raw_queues = data.get("queues")
    if not isinstance(raw_queues, dict) or not raw_queues:
        problems.append("queues: is required: a mapping of parent queue names to their definitions")
    elif len(raw_queues) > MAX_QUEUES:
        problems.append(f"queues: {len(raw_queues):,} queues, above the limit of {MAX_QUEUES:,}")
    else:
        for name, raw in raw_queues.items():
            queue = _queue(str(name), raw, vaults, problems)
            if queue is not None:
                queues[queue.name] = queue
        for queue in queues.values():
            url, problem = resolve_git_url(queue.deployment["git_url"], base_dir)
            if problem is not None:
                problems.append(f"queues.{queue.name}.deployment.git_url: {problem}")
            else:
                queue.deployment["git_url"] = url
        total = sum(len(q.sub_queues) for q in queues.values())
        if total > MAX_QUEUES:
            problems.append(f"queues: {total:,} queues counting sub-queues, above the limit of {MAX_QUEUES:,} "
                            "(an agent consumes at most that many)")
    settings: dict[str, Any] = {}
    for key in ("redis", "advertise_redis"):
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
                problems.append(f"{key}: must be a redis://, rediss:// or unix:// URL")
            else:
                settings["redis_url" if key == "redis" else key] = value
    if data.get("max_body_bytes") is not None:
        value = data["max_body_bytes"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
            problems.append("max_body_bytes: must be an integer >= 1024")
        else:
            settings["max_body_bytes"] = value
    if problems:
        raise QueuesFileError(source, problems)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for url in (settings.get("redis_url"), settings.get("advertise_redis")):
        if url:
            register_secret(urlsplit(url).password)
    return ServerSettings(queues=queues, api_keys=tuple(keys), source=source, warnings=tuple(warnings),
                          schedule=settings_schedule, **settings)


def _keys_in_file(data: Any, environ: Mapping[str, str], source: str) -> list[str]:
    """A warning for every API key whose value is written in the file (a literal, or the
    default of an unset ``${VAR:-default}``) instead of read from the environment: anyone who
    can read the file, or the README it came from, can use it."""
    raw = data.get("api_keys") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    warnings: list[str] = []
    for i, item in enumerate(raw[:MAX_ENTRIES]):
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str) or expand_text(key, {}) != expand_text(key, environ):
            continue
        names = [m.group(1).partition(":-")[0] for m in PLACEHOLDER.finditer(key) if m.group(1)]
        fix = f"set {' and '.join(names)}" if names else "read it from the environment with ${VAR}"
        warnings.append(f"api_keys[{i}].key ({printable(str(item.get('name', f'key{i}')), 60)}, role "
                        f"{printable(str(item.get('role')), 20)}): the key is written in {source}, not read "
                        f"from the environment, so anyone who can read that file can use it; fine on a "
                        f"loopback address for a try-out, otherwise {fix}")
    return warnings


# -- sections ------------------------------------------------------------------------------

def _api_keys(raw: Any, problems: list[str]) -> list[ApiKey]:
    if not isinstance(raw, list) or not raw:
        problems.append("api_keys: is required: a list of {name, key, role} (role: worker, client, admin or readonly)")
        return []
    if len(raw) > MAX_ENTRIES:
        problems.append(f"api_keys: {len(raw):,} keys, above the limit of {MAX_ENTRIES:,}")
        return []
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        path = f"api_keys[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: must be a mapping with name, key and role")
            continue
        name = item.get("name", f"key{i}")
        key = item.get("key")
        role = item.get("role")
        if not isinstance(key, str) or len(key) < 16:
            problems.append(f"{path}.key: must be a string of at least 16 characters "
                            "(use ${VAR} to read it from the environment)")
            continue
        if role not in ROLES:
            problems.append(f"{path}.role: must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        if key in seen:
            problems.append(f"{path}.key: the same key is listed twice")
            continue
        payloads = item.get("payloads", role != "readonly")
        if not isinstance(payloads, bool):
            problems.append(f"{path}.payloads: must be true or false, got {payloads!r}")
            continue
        seen.add(key)
        register_secret(key)
        keys.append(ApiKey(name=str(name), key=Secret(key), role=role, payloads=payloads))
    return keys


def _vaults(raw: Any, problems: list[str]) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("vaults: must be a mapping of vault names to {VARIABLE: value} mappings")
        return {}
    if len(raw) > MAX_ENTRIES:
        problems.append(f"vaults: {len(raw):,} vaults, above the limit of {MAX_ENTRIES:,}")
        return {}
    out: dict[str, dict[str, str]] = {}
    for name, entries in raw.items():
        values = _env_map(entries, f"vaults.{name}", problems, secret=True)
        if values is not None:
            out[str(name)] = values
    return out


def _queue(name: str, raw: Any, vaults: dict[str, dict[str, str]], problems: list[str]) -> QueueDef | None:
    path = f"queues.{name}"
    start = len(problems)
    if not _NAME.fullmatch(name):
        problems.append(f"{path}: a parent queue name is letters, digits, '-' and '_' (no dots; "
                        "sub-queues are listed under sub_queues)")
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping with deployment and optional sub_queues")
        return None
    for key in raw:
        if key not in ("priority", "sub_queues", "deployment", "task_defaults", "requires",
                       "aggregation", *FLOW_KEYS):
            problems.append(f"{path}.{key}: unknown key (expected priority, sub_queues, deployment, "
                            f"task_defaults, requires, aggregation, {', '.join(FLOW_KEYS)})")
    requires = _requires(raw.get("requires"), f"{path}.requires", problems)
    aggregation = None
    if raw.get("aggregation") is not None:  # the same keys as worker.queues[].aggregation
        aggregation = parse_aggregation(raw["aggregation"],
                                        lambda where, message: problems.append(f"{where}: {message}"), path)
    flow = parse_flow(raw, lambda where, message: problems.append(f"{where}: {message}"), path)
    priority = raw.get("priority", 1)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= MAX_WEIGHT:
        problems.append(f"{path}.priority: must be an integer from 1 to {MAX_WEIGHT:,}")
        priority = 1
    subs = _sub_queues(name, raw.get("sub_queues"), path, problems) or {name: priority}
    deployment, secrets, token = _deployment(raw.get("deployment"), f"{path}.deployment", vaults, problems)
    defaults = _defaults(raw.get("task_defaults"), f"{path}.task_defaults", problems)
    if len(problems) > start:
        return None
    ordered = dict(sorted(subs.items(), key=lambda kv: (-kv[1], kv[0])))
    return QueueDef(name=name, sub_queues=ordered, deployment=deployment, secrets=secrets,
                    git_token=token, defaults=defaults, flow=flow, requires=requires,
                    aggregation=aggregation)


def _requires(raw: Any, path: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    try:
        return parse_labels(raw, "required labels")
    except Invalid as exc:
        problems.append(f"{path}: {exc.message(raw)}")
        return ()


def _sub_queues(parent: str, raw: Any, path: str, problems: list[str]) -> dict[str, int]:
    if raw is None:
        return {}
    items: list[tuple[Any, Any, str]] = []
    if isinstance(raw, dict):
        items = [(k, v, f"{path}.sub_queues.{k}") for k, v in raw.items()]
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            where = f"{path}.sub_queues[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                problems.append(f"{where}: must be a mapping with name and priority")
                continue
            items.append((item["name"], item.get("priority", 1), where))
    else:
        problems.append(f"{path}.sub_queues: must be a mapping of name: priority or a list of {{name, priority}}")
        return {}
    if len(items) > MAX_QUEUES:
        problems.append(f"{path}.sub_queues: {len(items):,} sub-queues, above the limit of {MAX_QUEUES:,}")
        return {}
    out: dict[str, int] = {}
    for name, priority, where in items:
        name = str(name)
        full = name if name.startswith(parent + ".") else f"{parent}.{name}"
        if not _NAME.fullmatch(full[len(parent) + 1:]):
            problems.append(f"{where}: sub-queue name {name!r} must be letters, digits, '-' and '_'")
            continue
        if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= MAX_WEIGHT:
            problems.append(f"{where}: priority (the weight) must be an integer from 1 to {MAX_WEIGHT:,}, "
                            f"got {printable(repr(priority), 60)}")
            continue
        if full in out:
            problems.append(f"{where}: sub-queue {full!r} is listed twice")
            continue
        out[full] = priority
    if not out and not problems:
        problems.append(f"{path}.sub_queues: is empty; leave it out for a single queue named {parent!r}")
    return out


def _deployment(raw: Any, path: str, vaults: dict[str, dict[str, str]],
                problems: list[str]) -> tuple[dict[str, Any], dict[str, str], str | None]:
    if not isinstance(raw, dict):
        problems.append(f"{path}: is required: a mapping with at least git_url and startup_cmd")
        return {}, {}, None
    for key in raw:
        if key not in _DEPLOYMENT_KEYS:
            problems.append(f"{path}.{key}: unknown key (expected one of {', '.join(_DEPLOYMENT_KEYS)})")
    out: dict[str, Any] = {}
    for key in ("git_url", "startup_cmd"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{path}.{key}: is required (a non-empty string)")
        else:
            out[key] = value.strip()
    if "startup_cmd" in out:
        try:
            shlex.split(out["startup_cmd"])
        except ValueError as exc:
            problems.append(f"{path}.startup_cmd: cannot be split into arguments: {exc}")
    for key in ("branch", "code_path", "requirements"):
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{path}.{key}: must be a non-empty string")
            else:
                out[key] = value.strip()
    commit = raw.get("commit")
    if commit is not None:
        if not isinstance(commit, str) or not _SHA.fullmatch(commit):
            problems.append(f"{path}.commit: must be a commit SHA (hex)")
        else:
            out["commit"] = commit
    mode = raw.get("mode", "long_running")
    if mode not in MODES:
        problems.append(f"{path}.mode: must be long_running or one_shot, got {mode!r}")
    out["mode"] = mode
    for key, default, minimum, maximum in (("startup_timeout_secs", 60, 1, None),
                                           ("processes", None, 1, MAX_PROCESSES)):
        value = raw.get(key, default)
        if key == "processes" and value in (None, "auto"):
            continue  # the agent starts as many children as its worker.concurrency needs
        if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
                or (maximum is not None and value > maximum)):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            problems.append(f"{path}.{key}: must be an integer {bounds}"
                            + (" or auto" if key == "processes" else ""))
        out[key] = value
    storage = raw.get("redis_storage", True)
    if not isinstance(storage, bool):
        problems.append(f"{path}.redis_storage: must be true or false")
    out["redis_storage"] = storage
    out["env_vars"] = _env_map(raw.get("env_vars"), f"{path}.env_vars", problems) or {}
    names = raw.get("vaults") or []
    secrets: dict[str, str] = {}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{path}.vaults: must be a list of vault names")
        names = []
    elif len(names) > MAX_ENTRIES:
        problems.append(f"{path}.vaults: {len(names):,} vault names, above the limit of {MAX_ENTRIES:,}")
        names = []
    for name in names:
        if name not in vaults:
            problems.append(f"{path}.vaults: unknown vault {name!r} (defined: {', '.join(vaults) or 'none'})")
        else:
            secrets.update(vaults[name])
    out["vaults"] = list(names)
    secrets.update(_env_map(raw.get("secrets"), f"{path}.secrets", problems, secret=True) or {})
    token = raw.get("git_token") or None  # an empty ${VAR:-} means no token
    if token is not None and not isinstance(token, str):
        problems.append(f"{path}.git_token: must be a non-empty string (use ${{VAR}})")
        token = None
    register_secret(token)
    return out, secrets, token


def _defaults(raw: Any, path: str, problems: list[str]) -> TaskDefaults:
    if raw is None:
        return TaskDefaults()
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping with max_retry, timeout, retention")
        return TaskDefaults()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "max_retry":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT32:
                problems.append(f"{path}.max_retry: must be an integer from 0 to {MAX_INT32:,}")
            else:
                values[key] = value
        elif key in ("timeout", "retention"):
            seconds = parse_seconds(value)
            if seconds is None:
                problems.append(f"{path}.{key}: must be seconds or a duration like 90s, 30m, 24h")
            else:
                values[key] = seconds
        else:
            problems.append(f"{path}.{key}: unknown key (expected max_retry, timeout, retention)")
    return TaskDefaults(**values)


def parse_seconds(value: Any) -> float | None:
    """A number of seconds, or a duration like ``1h30m`` / ``250ms`` / ``2d``; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str) and value.strip():
        text = value.strip()
        parts = _DURATION.findall(text)
        if "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return None


def _env_map(raw: Any, path: str, problems: list[str], *, secret: bool = False) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping of VARIABLE: value")
        return None
    if len(raw) > MAX_ENTRIES:
        problems.append(f"{path}: {len(raw):,} variables, above the limit of {MAX_ENTRIES:,}")
        return None
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            problems.append(f"{path}.{name}: is not a valid environment variable name")
            continue
        if isinstance(value, (dict, list)) or value is None:
            problems.append(f"{path}.{name}: must be a string or a number")
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if (problem := env_value_problem(name, text)) is not None:
            problems.append(f"{path}.{name}: {problem}")
            continue
        if secret:
            register_secret(text)
        out[name] = text
    return out


def _expand(data: Any, environ: Mapping[str, str], problems: list[str], path: str) -> Any:
    if isinstance(data, dict):
        return {k: _expand(v, environ, problems, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand(v, environ, problems, f"{path}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data
    expanded, failures = expand_text(data, environ)
    problems.extend(f"{path}: {failure}" for failure in failures)
    return expanded

