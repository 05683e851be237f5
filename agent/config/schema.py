"""The schema: which keys each section accepts and how each is parsed, then the cross-field rules
(local vs server mode, mutually exclusive fields) and construction of the :class:`Config`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import fields as f
from .capacity import MAX_PREFETCH, MAX_PROCESSES, MAX_THREADS, children_needed
from .limits import MAX_CONCURRENCY, MAX_DURATION, MAX_INT32
from .model import (
    DEFAULT_OPS_LISTEN,
    BootstrapConfig,
    Config,
    DeploymentConfig,
    GitConfig,
    LoggingConfig,
    OpsConfig,
    RedisConfig,
    RetryConfig,
    ServerConfig,
    WorkerConfig,
)
from .placement import MAX_PROCESSES_PER_GPU, check_requirements
from .sources import FAILED, Findings, unknown_key
from .values import (
    Invalid,
    describe,
    parse_addr,
    parse_http_url,
    parse_listen,
    parse_redis_url,
    split_host_port,
)


@dataclass(frozen=True)
class Field:
    parse: f.Parser
    secret: bool = False
    env: str | None = "scalar"  #: kind of RUNDOWN_* override: scalar, list (comma-separated), None


SECTIONS: dict[str, tuple[type, dict[str, Field]]] = {
    "server": (ServerConfig, {
        "url": Field(f.simple(parse_http_url)),
        "api_key": Field(f.secret, secret=True),
        "redis_auth_attempts": Field(f.integer(0)),
    }),
    "worker": (WorkerConfig, {
        "queues": Field(f.queues, env="list"),
        "queue": Field(f.queues),  # deprecated alias of a one-item queues list
        "concurrency": Field(f.integer(1, MAX_CONCURRENCY)),
        "prefetch": Field(f.integer(0, MAX_PREFETCH)),
        "strict_priority": Field(f.boolean),
        "shutdown_timeout": Field(f.duration(0)),
        "max_tasks_per_child": Field(f.integer(0)),
        "max_memory_per_child": Field(f.size),
        "labels": Field(f.labels, env="list"),
    }),
    "bootstrap": (BootstrapConfig, {
        "retries": Field(f.integer(1)),
        "retry_delay": Field(f.duration(0)),
    }),
    "deployment": (DeploymentConfig, {
        "dir": Field(f.path()),
        "git_url": Field(f.git_url),
        "branch": Field(f.word),
        "commit": Field(f.word),
        "code_path": Field(f.relative_path),
        "path": Field(f.path("dir")),
        "startup_cmd": Field(f.command),
        "env_vars": Field(f.env_vars, env=None),
        "startup_timeout": Field(f.duration(1e-9)),
        "mode": Field(f.choice("long_running", "one_shot")),
        "processes": Field(f.auto_or_integer(1, MAX_PROCESSES)),
        "threads": Field(f.integer(1, MAX_THREADS)),
        "async_limit": Field(f.integer(1, MAX_CONCURRENCY)),
        "max_in_flight_per_child": Field(f.integer(1, MAX_CONCURRENCY)),  # deprecated alias of async_limit
        "one_shot_memory_limit": Field(f.size),
        "one_shot_cpu_seconds": Field(f.integer(1, int(MAX_DURATION))),
        "gpus": Field(f.gpus, env="list"),
        "processes_per_gpu": Field(f.integer(1, MAX_PROCESSES_PER_GPU)),
        "one_shot_start": Field(f.choice("fork", "exec")),
        "one_shot_load": Field(f.choice("per_task", "inherit")),
        "venv": Field(f.venv),
        "requirements": Field(f.code_file),
    }),
    "git": (GitConfig, {
        "ssh_key": Field(f.path("file")),
        "token": Field(f.secret, secret=True),
        "known_hosts": Field(f.path("file")),
        "accept_new_host_keys": Field(f.boolean),
    }),
    "retry": (RetryConfig, {
        "max_retry": Field(f.integer(0, MAX_INT32)),
    }),
    "ops": (OpsConfig, {
        "listen": Field(f.simple(parse_listen)),
        "token": Field(f.secret, secret=True),
        "enable_controls": Field(f.boolean),
    }),
    "logging": (LoggingConfig, {
        "level": Field(f.choice("debug", "info", "warning", "error", aliases={"warn": "warning"})),
        "format": Field(f.choice("auto", "human", "json")),
    }),
    "redis": (RedisConfig, {
        "url": Field(f.simple(parse_redis_url)),
        "addr": Field(f.simple(parse_addr)),
        "password": Field(f.secret, secret=True),
        "db": Field(f.integer(0)),
        "use_tls": Field(f.boolean),
        "tls_ca_file": Field(f.path("file")),
        "tls_cert_file": Field(f.path("file")),
        "tls_key_file": Field(f.path("file")),
    }),
}

#: section → field → override kind, for :func:`agent.config.sources.apply_overrides`.
OVERRIDABLE = {name: {k: fld.env for k, fld in table.items() if fld.env}
               for name, (_, table) in SECTIONS.items()}
#: (section, field) pairs holding secrets.
SECRET_FIELDS = [(name, k) for name, (_, table) in SECTIONS.items() for k, fld in table.items() if fld.secret]


def _given(raw: dict[str, Any], key: str) -> bool:
    return raw.get(key) is not None


def _parse_section(name: str, raw: Any, findings: Findings, file_dir: Path) -> dict[str, Any]:
    _, table = SECTIONS[name]
    if raw is None or raw is FAILED:
        return {}
    if not isinstance(raw, dict):
        findings.add(name, f"expected a mapping of {name} settings, got {describe(raw)}")
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{name}.{key}"
        spec = table.get(str(key))
        if spec is None:
            findings.add(path, unknown_key(str(key), table))
            continue
        if value is None or value is FAILED:
            continue
        try:
            values[str(key)] = spec.parse(value, f.Ctx(path, findings, file_dir))
        except Invalid as exc:
            findings.add(path, exc.message(value, spec.secret))
    return values


def build_config(data: Any, findings: Findings, file_dir: Path, source: Path | None) -> Config | None:
    """Type-check the raw tree; returns None when ``findings`` holds problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        findings.add("(top level)", f"expected a mapping of sections (server, worker, ...), got {describe(data)}")
        data = {}
    for key in data:
        if str(key) not in SECTIONS and str(key) != "schedule":
            findings.add(str(key), unknown_key(str(key), SECTIONS, what="section"))
    raw = {name: data.get(name) if isinstance(data.get(name), dict) else {} for name in SECTIONS}
    values = {name: _parse_section(name, data.get(name), findings, file_dir) for name in SECTIONS}
    from agent.scheduler.entries import parse_schedule  # the top-level list of periodic tasks

    schedule = parse_schedule(data.get("schedule"), "schedule", findings.add)

    _check_queues(raw["worker"], values["worker"], findings)
    _check_async_limit(raw["deployment"], values["deployment"], findings)
    _check_gpus(raw["deployment"], values["deployment"], findings)
    _check_capacity(raw["deployment"], values["worker"], values["deployment"], findings)
    _check_mode(data, raw, findings)
    _check_redis(raw["redis"], values["redis"], findings)
    _check_ops(values["ops"], findings)
    if findings.problems:
        return None

    worker = WorkerConfig(**values["worker"])
    deployment = values["deployment"]
    deployment.setdefault("dir", file_dir / "deployment")
    deployment.setdefault("async_limit", worker.concurrency)
    check_requirements(worker.queues, worker.labels, findings.warn, findings.add)
    if findings.problems:
        return None
    for spec in worker.queues:
        if spec.concurrency is not None and spec.concurrency > worker.concurrency:
            findings.warn(f"queue {spec.name}: its limit {spec.concurrency} is above "
                          f"worker.concurrency {worker.concurrency}, which caps it")
    config = Config(
        server=ServerConfig(**values["server"]),
        worker=worker,
        bootstrap=BootstrapConfig(**values["bootstrap"]),
        deployment=DeploymentConfig(**deployment),
        git=GitConfig(**values["git"]),
        retry=RetryConfig(**values["retry"]),
        ops=OpsConfig(**values["ops"]),
        logging=LoggingConfig(**values["logging"]),
        redis=RedisConfig(**values["redis"]) if isinstance(data.get("redis"), dict) else None,
        schedule=schedule,
        source=source,
    )
    return replace(config, warnings=tuple(findings.warnings))


def _check_queues(raw: dict[str, Any], values: dict[str, Any], findings: Findings) -> None:
    alias = values.pop("queue", None)
    if _given(raw, "queue") and _given(raw, "queues"):
        findings.add("worker.queue", "give worker.queues or the deprecated worker.queue, not both")
    elif _given(raw, "queue"):
        findings.warn("worker.queue is deprecated: write worker.queues: [<name>]")
        if alias is not None:
            values["queues"] = alias
    elif not _given(raw, "queues") or raw["queues"] == []:
        findings.add("worker.queues", 'required: at least one queue, e.g. queues: ["emails"]')


def _check_async_limit(raw: dict[str, Any], values: dict[str, Any], findings: Findings) -> None:
    alias = values.pop("max_in_flight_per_child", None)
    if _given(raw, "max_in_flight_per_child") and _given(raw, "async_limit"):
        findings.add("deployment.max_in_flight_per_child", "give deployment.async_limit or the deprecated "
                     "deployment.max_in_flight_per_child, not both")
    elif _given(raw, "max_in_flight_per_child"):
        findings.warn("deployment.max_in_flight_per_child is deprecated: write deployment.async_limit "
                      "(async handlers at once per child)")
        if alias is not None:
            values["async_limit"] = alias


_CAPACITY_PATHS = frozenset({"worker.concurrency", "deployment.processes", "deployment.threads",
                             "deployment.async_limit", "deployment.max_in_flight_per_child",
                             "deployment.mode"})


def _check_capacity(raw: dict[str, Any], worker: dict[str, Any], deployment: dict[str, Any],
                    findings: Findings) -> None:
    """Bounds on the children a deployment needs (long_running; one_shot starts one per task)."""
    if any(p.path in _CAPACITY_PATHS for p in findings.problems):
        return  # a value it depends on is already wrong: its defaults would mislead
    if deployment.get("mode", "long_running") != "long_running":
        return
    concurrency: int = worker.get("concurrency", WorkerConfig().concurrency)
    threads: int = deployment.get("threads", DeploymentConfig().threads)
    processes: int | None = deployment.get("processes")
    if processes is None:
        _check_auto(raw, concurrency, threads, deployment.get("async_limit", concurrency), findings)
    elif processes * threads < concurrency:
        slots = processes * threads
        needed = children_needed(concurrency, threads)
        per_child = children_needed(concurrency, processes)
        fixes = []
        if needed <= MAX_PROCESSES:
            fixes += ["deployment.processes: auto", f"deployment.processes: {needed}"]
        if per_child <= MAX_THREADS:
            fixes.append(f"deployment.threads: {per_child}")
        fix = f"set {_either(fixes)}, or lower worker.concurrency" if fixes else "lower worker.concurrency"
        one = slots == 1
        findings.warn(
            f"worker.concurrency {concurrency} is above the {slots} sync handler slot{'' if one else 's'} "
            f"of the deployment (processes {processes} x threads {threads}): at most {slots} sync "
            f"handler{' runs' if one else 's run'} at once; {fix}")


def _check_auto(raw: dict[str, Any], concurrency: int, threads: int, async_limit: int,
                findings: Findings) -> None:
    sync_children = children_needed(concurrency, threads)
    if sync_children > MAX_PROCESSES:
        min_threads = children_needed(concurrency, MAX_PROCESSES)
        fix = (f"raise deployment.threads to {min_threads} or more for sync code, or "
               if min_threads <= MAX_THREADS else "")
        auto = "auto" if _given(raw, "processes") else "auto (the default)"
        findings.add("deployment.processes", (
            f"{auto} would start {sync_children} children for sync handlers (worker.concurrency "
            f"{concurrency} / deployment.threads {threads}), above the limit of {MAX_PROCESSES}: "
            f"{fix}set deployment.processes: 1 for async-only code (or lower worker.concurrency)"))
    async_children = children_needed(concurrency, async_limit)
    if async_children > MAX_PROCESSES:
        key = "max_in_flight_per_child" if _given(raw, "max_in_flight_per_child") else "async_limit"
        findings.add(f"deployment.{key}", (
            f"with deployment.processes: auto, async-only code would start {async_children} children "
            f"(worker.concurrency {concurrency} / deployment.{key} {async_limit}), above the limit of "
            f"{MAX_PROCESSES}: raise deployment.{key} to {children_needed(concurrency, MAX_PROCESSES)} "
            f"or more, or give deployment.processes a number, or lower worker.concurrency"))


def _check_gpus(raw: dict[str, Any], deployment: dict[str, Any], findings: Findings) -> None:
    """GPU placement: warm children only; ``gpus: [0, 1]`` with ``processes_per_gpu: N`` makes
    ``processes`` 2N (``all`` is counted at start); an explicit ``processes`` is spread evenly."""
    gpus = deployment.get("gpus")
    if gpus is None:
        if _given(raw, "processes_per_gpu"):
            findings.add("deployment.processes_per_gpu", "needs deployment.gpus (the devices to "
                         "place children on, or all)")
        return
    if deployment.get("mode", "long_running") != "long_running":
        findings.add("deployment.gpus", "GPU placement needs mode: long_running (warm children "
                     "that keep their device)")
        return
    if _given(raw, "processes") and _given(raw, "processes_per_gpu"):
        findings.add("deployment.processes", "give deployment.processes (spread evenly over the "
                     "GPUs) or deployment.processes_per_gpu, not both")
        return
    if isinstance(gpus, tuple) and not _given(raw, "processes"):
        deployment["processes"] = len(gpus) * deployment.get("processes_per_gpu", 1)


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _check_mode(data: dict[str, Any], raw: dict[str, dict[str, Any]], findings: Findings) -> bool:
    """Apply the mode rule; returns True for local mode."""
    deployment, server = raw["deployment"], raw["server"]
    has_redis = isinstance(data.get("redis"), dict)
    has_code = _given(deployment, "git_url") or _given(deployment, "path")
    if _given(deployment, "git_url") and _given(deployment, "path"):
        findings.add("deployment.path", "deployment.git_url and deployment.path are mutually exclusive: give one")
    local = has_redis and has_code
    if local:
        if not _given(deployment, "startup_cmd"):
            findings.add("deployment.startup_cmd", 'required in local mode: the command that starts '
                         'the task code, e.g. "python worker.py"')
        return True
    hint = ("required: the control server; or run in local mode with a redis section and "
            "deployment.git_url or deployment.path plus deployment.startup_cmd")
    for key in ("url", "api_key"):
        if not _given(server, key):
            findings.add(f"server.{key}", hint)
    if has_redis:
        findings.warn("the redis section is used only in local mode (it needs deployment.git_url or "
                      "deployment.path); in server mode the control server provides Redis")
    if has_code:
        findings.warn("deployment.git_url / deployment.path are used only in local mode (it needs a "
                      "redis section); in server mode the control server sends the deployment")
    return False


def _check_redis(raw: dict[str, Any], values: dict[str, Any], findings: Findings) -> None:
    if not raw and not values:
        return
    url = values.get("url")
    if not _given(raw, "url") and not _given(raw, "addr"):
        findings.add("redis", 'expected url (e.g. "redis://localhost:6379/0") or addr (e.g. "localhost:6379")')
        return
    if _given(raw, "url"):
        for key, why in (("addr", "give redis.url or redis.addr, not both"),
                         ("db", "with redis.url, put the database in the URL: redis://host:6379/<db>"),
                         ("use_tls", "with redis.url, use the rediss:// scheme for TLS")):
            if _given(raw, key):
                findings.add(f"redis.{key}", why)
        if url is not None and _given(raw, "password") and urlsplit(url).password is not None:
            findings.add("redis.password", "the URL already holds a password: give it in one place")
    tls = values.get("use_tls", False) or (url or "").startswith("rediss")
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if _given(raw, key) and not tls:
            findings.add(f"redis.{key}", "TLS files need redis.use_tls: true (or a rediss:// url)")


def _check_ops(values: dict[str, Any], findings: Findings) -> None:
    listen = values.get("listen", DEFAULT_OPS_LISTEN)
    if not values.get("enable_controls") or values.get("token") is not None or listen is None:
        return
    host = split_host_port(listen)[0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        findings.add("ops.enable_controls", "needs ops.token when ops.listen is not a loopback address "
                     "(anyone who can reach it could drain the agent)")
