"""Typed agent configuration: YAML file + ``${VAR}`` placeholders + ``RUNDOWN_*`` overrides.

Usage::

    from agent.config import ConfigError, load_config

    try:
        config = load_config("config.yml")
    except ConfigError as exc:
        for problem in exc.problems:      # every problem, each with its field path
            print(problem.path, problem.message)

The modules: :mod:`.model` (the dataclasses), :mod:`.values` (parsers of single values),
:mod:`.sources` (file, placeholders, environment), :mod:`.schema` (keys, types, cross-field
rules), :mod:`.loader` (``load_config``), :mod:`.capacity` (children and slots the config asks
for: ``planned_children``, ``capacity_summary``). The reference is ``docs/configuration.md``.
"""

from .capacity import (
    MAX_PREFETCH,
    MAX_PROCESSES,
    MAX_THREADS,
    capacity_summary,
    effective_async_limit,
    plan_children,
    planned_children,
    slots_per_child,
)
from .errors import ConfigError, Problem
from .loader import load_config
from .model import (
    DEFAULT_OPS_LISTEN,
    BootstrapConfig,
    Config,
    DeploymentConfig,
    GitConfig,
    LoggingConfig,
    OpsConfig,
    QueueSpec,
    RedisConfig,
    RetryConfig,
    Secret,
    ServerConfig,
    WorkerConfig,
)
from .values import format_duration, parse_duration, parse_size

__all__ = [
    "DEFAULT_OPS_LISTEN",
    "MAX_PREFETCH",
    "MAX_PROCESSES",
    "MAX_THREADS",
    "BootstrapConfig",
    "Config",
    "ConfigError",
    "DeploymentConfig",
    "GitConfig",
    "LoggingConfig",
    "OpsConfig",
    "Problem",
    "QueueSpec",
    "RedisConfig",
    "RetryConfig",
    "Secret",
    "ServerConfig",
    "WorkerConfig",
    "capacity_summary",
    "effective_async_limit",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_size",
    "plan_children",
    "planned_children",
    "slots_per_child",
]
