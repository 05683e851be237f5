"""``load_config``: the one place that reads the config file and the environment."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.logs import MIN_SECRET_LENGTH, redact, register_secret, url_secrets

from .errors import ConfigError, Problem
from .model import Config
from .schema import OVERRIDABLE, SECRET_FIELDS, build_config
from .sources import Findings, apply_overrides, expand_placeholders, read_yaml

__all__ = ["load_config"]


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, expand, override and validate the configuration.

    Order: defaults < the YAML file < ``RUNDOWN_<SECTION>_<FIELD>`` environment variables.
    ``${VAR}`` and ``${VAR:-default}`` in the file's string values are expanded from ``environ``.
    Every secret found is registered with :func:`agent.logs.register_secret`.

    Args:
        path: the YAML file; None for configuration from the environment alone.
        environ: the environment; ``os.environ`` when omitted.

    Raises:
        ConfigError: listing every problem found (missing file and YAML syntax errors included).
    """
    environ = os.environ if environ is None else environ
    findings = Findings()
    source = Path(path) if path is not None else None
    label = str(source) if source is not None else None
    data: Any = {}
    file_dir = Path.cwd()
    if source is not None:
        data = read_yaml(source, findings)
        file_dir = source.absolute().parent
    if data is None:
        data = {}
    data = apply_overrides(data, environ, OVERRIDABLE, findings)
    data = expand_placeholders(data, environ, findings)
    # Very short values are not masked in messages (it would garble them) nor registered.
    secrets = [s for s in _secrets_in(data) if len(s.strip()) >= MIN_SECRET_LENGTH]
    for secret in secrets:
        register_secret(secret)
    config = build_config(data, findings, file_dir, source.absolute() if source else None)
    if findings.problems or config is None:
        raise ConfigError(_ordered(findings.problems, secrets), label)
    if config.source is not None:
        config = replace(config, source=Path(os.path.abspath(config.source)))
    return config


def _secrets_in(data: Any) -> Iterable[str]:
    """Secret values in the raw tree: secret fields and credentials embedded in URLs."""
    if not isinstance(data, dict):
        return
    for section, key in SECRET_FIELDS:
        value = data.get(section)
        value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            yield str(value)
    for section, key in (("redis", "url"), ("deployment", "git_url"), ("server", "url")):
        value = data.get(section)
        value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            yield from url_secrets(value)


def _ordered(problems: list[Problem], secrets: list[str]) -> list[Problem]:
    """File order (problems without a line last), with any secret masked in the messages."""
    clean = [replace(p, message=redact(p.message, secrets)) for p in problems]
    return sorted(clean, key=lambda p: (p.line is None, p.line or 0))
