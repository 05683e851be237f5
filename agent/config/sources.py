"""Where raw configuration comes from: the YAML file, ``${VAR}`` placeholders, ``RUNDOWN_*`` overrides.

The output is a plain tree (dicts, lists, scalars) for :mod:`agent.config.schema` to type-check,
plus a :class:`Findings` holding problems, warnings, the file line of every key and which fields
an environment variable set.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from agent.config.placeholders import expand_text

from .bounded_yaml import YamlFileError, read_yaml_file
from .errors import ConfigError, Problem
from .values import printable

__all__ = ["FAILED", "Findings", "apply_overrides", "expand_placeholders", "read_yaml"]

#: Stands in for a value whose placeholder could not be expanded: it is already reported, so the
#: schema neither parses it nor reports the field as missing.
FAILED: Any = type("Failed", (), {"__repr__": lambda self: "<failed>"})()

# (section, field) -> the other name of the same setting (a deprecated alias, or its new name).
_ALIASES = {
    ("worker", "queues"): "queue", ("worker", "queue"): "queues",
    ("deployment", "async_limit"): "max_in_flight_per_child",
    ("deployment", "max_in_flight_per_child"): "async_limit",
}

# RUNDOWN_* variables that other parts of the project read; not config overrides.
# Variables of the project that are not config overrides: the config file's path, the test
# Redis binary, and rundown-server's (its options and the example queues file's API keys),
# which are often exported in the shell that starts an agent too.
_NOT_OVERRIDES = frozenset({"RUNDOWN_CONFIG", "RUNDOWN_REDIS_SERVER", "RUNDOWN_SERVER_LISTEN",
                            "RUNDOWN_SERVER_REDIS", "RUNDOWN_WORKER_KEY", "RUNDOWN_CLIENT_KEY",
                            "RUNDOWN_ADMIN_KEY"})


class Findings:
    """Problems and warnings found while loading, with the context to place them."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.lines: dict[str, int] = {}  # "worker.queues[1]" -> line in the file
        self.origins: dict[str, str] = {}  # "worker.concurrency" -> "RUNDOWN_WORKER_CONCURRENCY"

    def origin(self, path: str) -> str | None:
        """The environment variable that set ``path`` (or a field containing it)."""
        for prefix, name in self.origins.items():
            if path == prefix or path.startswith((prefix + ".", prefix + "[")):
                return name
        return None

    def line(self, path: str) -> int | None:
        if len(path) > 1000:  # a key that long was reported as such; stripping it part by part is slow
            return None
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else ""
        return None

    def add(self, path: str, message: str) -> None:
        line = self.line(path)
        path = printable(path, 200)  # keys are the user's: a control character or 1 MB of key
        origin = self.origin(path)
        if origin is not None:
            self.problems.append(Problem(path, f"{message} (from {origin})"))
        else:
            self.problems.append(Problem(path, message, line))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def unknown_key(key: str, known: Iterable[str], what: str = "key") -> str:
    """``unknown key "concurency"; did you mean "concurrency"?`` (or the list of known keys)."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) if len(key) <= 100 else []
    shown = printable(key, 60)
    if close:
        return f'unknown {what} "{shown}"; did you mean "{close[0]}"?'
    return f'unknown {what} "{shown}"; expected one of: {", ".join(known)}'


def read_yaml(path: Path, findings: Findings) -> Any:
    """Parse the file (bounded: see :mod:`.bounded_yaml`) and index the line of every key;
    fatal problems raise :class:`ConfigError`."""
    label = str(path)
    try:
        return read_yaml_file(path, inspect=lambda root: _index(root, "", findings))
    except YamlFileError as exc:
        where = exc.where if exc.syntax else label
        raise ConfigError([Problem(where, exc.reason)], label) from None


def _index(node: yaml.Node, path: str, findings: Findings) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            child = f"{path}.{key}" if path else key
            if key in first:
                findings.problems.append(Problem(printable(child, 200), f"duplicate key (first on line {first[key]})",
                                                 line))
                continue
            first[key] = line
            findings.lines[child] = line
            _index(value_node, child, findings)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            findings.lines[child] = item.start_mark.line + 1
            _index(item, child, findings)




def expand_placeholders(data: Any, environ: Mapping[str, str], findings: Findings, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value (not keys); ``$${`` → ``${``.

    Runs on the parsed tree, so an expanded value can never change the YAML structure.
    A value that cannot be expanded is reported and replaced by :data:`FAILED`.
    """
    if isinstance(data, dict):
        return {k: expand_placeholders(v, environ, findings, f"{path}.{k}" if path else str(k))
                for k, v in data.items()}
    if isinstance(data, list):
        return [expand_placeholders(v, environ, findings, f"{path}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data and findings.origin(path) is None:
        return _expand(data, environ, findings, path)  # values from RUNDOWN_* stay literal
    return data


def _expand(text: str, environ: Mapping[str, str], findings: Findings, path: str) -> Any:
    expanded, failures = expand_text(text, environ)
    for failure in failures:
        findings.add(path, failure)
    return FAILED if failures else expanded


def override_names(fields: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, str, str]]:
    """``RUNDOWN_<SECTION>_<FIELD>`` → (section, field, kind) for every overridable field."""
    names = {}
    for section, table in fields.items():
        for name, kind in table.items():
            names[f"RUNDOWN_{section}_{name}".upper()] = (section, name, kind)
    return names


def apply_overrides(data: Any, environ: Mapping[str, str], fields: Mapping[str, Mapping[str, str]],
                    findings: Findings) -> Any:
    """Set each field named by a non-empty ``RUNDOWN_<SECTION>_<FIELD>`` variable, over the file.

    Args:
        fields: section → field → kind (``scalar``, or ``list`` for comma-separated values).
    """
    if not isinstance(data, dict):
        return data
    names = override_names(fields)
    prefixes = tuple(f"RUNDOWN_{s.upper()}_" for s in fields)
    for var in sorted(environ):
        value = environ[var]
        if var not in names:
            if var.startswith(prefixes) and var not in _NOT_OVERRIDES and value:
                close = difflib.get_close_matches(var, list(names), n=1, cutoff=0.8)
                if close:
                    findings.warn(f"environment variable {var} is not a config override; "
                                  f"did you mean {close[0]}?")
            continue
        if value == "":
            continue  # an empty variable counts as unset
        section, name, kind = names[var]
        target = data.setdefault(section, {})
        if target is None:
            target = data[section] = {}
        if not isinstance(target, dict):
            continue  # the section itself is wrong; the schema reports it
        target[name] = [v.strip() for v in value.split(",") if v.strip()] if kind == "list" else value
        _forget(findings, f"{section}.{name}")
        findings.origins[f"{section}.{name}"] = var
        # A variable for a field or its deprecated alias replaces the other one from the file.
        other = _ALIASES.get((section, name))
        if other is not None:
            target.pop(other, None)
    return data


def _forget(findings: Findings, path: str) -> None:
    for key in [k for k in findings.lines if k == path or k.startswith((path + ".", path + "["))]:
        del findings.lines[key]
