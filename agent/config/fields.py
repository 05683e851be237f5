"""Field parsers that need context: the field's path (to report nested problems) and the base
directory (to make relative paths absolute). Each is ``parse(value, ctx) -> typed value`` and
raises :class:`~agent.config.values.Invalid` for a problem with the value as a whole.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .aggregation import parse_aggregation
from .flow import FLOW_KEYS, parse_flow
from .limits import MAX_CONCURRENCY, MAX_ENTRIES, MAX_QUEUES, MAX_WEIGHT, env_value_problem
from .model import QueueSpec, Secret
from .placement import parse_gpus, parse_labels
from .sources import FAILED, Findings, unknown_key
from .values import (
    QUEUE_EXPECTED,
    Invalid,
    check_queue_name,
    describe,
    parse_bool,
    parse_duration,
    parse_int,
    parse_queue_string,
    parse_size,
    parse_str,
    printable,
)

Parser = Callable[[Any, "Ctx"], Any]


@dataclass(frozen=True)
class Ctx:
    path: str
    findings: Findings
    file_dir: Path

    @property
    def base_dir(self) -> Path:
        """Relative paths resolve against the config file's directory, or the working directory
        when the value came from an environment variable (or there is no file)."""
        return Path.cwd() if self.findings.origin(self.path) else self.file_dir

    def add(self, path: str, message: str) -> None:
        self.findings.add(path, message)


def simple(fn: Callable[[Any], Any]) -> Parser:
    return lambda value, ctx: fn(value)


def text(value: Any, ctx: Ctx) -> str:
    """A non-empty string without surrounding whitespace."""
    result = parse_str(value).strip()
    if not result:
        raise Invalid("a non-empty string")
    return result


def word(value: Any, ctx: Ctx) -> str:
    """A non-empty string without whitespace (a branch, a commit)."""
    result = text(value, ctx)
    if any(c.isspace() for c in result):
        raise Invalid("a single word without spaces")
    return result


def secret(value: Any, ctx: Ctx) -> Secret:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise Invalid("a string")
    if not str(value):
        raise Invalid("a non-empty string", "must not be empty")
    return Secret(str(value))


def integer(minimum: int | None, maximum: int | None = None) -> Parser:
    return lambda value, ctx: parse_int(value, minimum, maximum)


def auto_or_integer(minimum: int, maximum: int) -> Parser:
    """``auto`` (returned as None) or an integer from ``minimum`` to ``maximum``."""
    expected = f'"auto" or an integer from {minimum} to {maximum}'

    def parse(value: Any, ctx: Ctx) -> int | None:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        try:
            return parse_int(value, minimum, maximum)
        except Invalid:
            raise Invalid(expected) from None

    return parse


def boolean(value: Any, ctx: Ctx) -> bool:
    return parse_bool(value)


def duration(minimum: float) -> Parser:
    return lambda value, ctx: parse_duration(value, minimum)


def size(value: Any, ctx: Ctx) -> int:
    return parse_size(value)


def choice(*choices: str, aliases: dict[str, str] | None = None) -> Parser:
    expected = "one of " + ", ".join(f'"{c}"' for c in choices)

    def parse(value: Any, ctx: Ctx) -> str:
        if isinstance(value, str):
            key = value.strip().lower()
            key = (aliases or {}).get(key, key)
            if key in choices:
                return key
        raise Invalid(expected)

    return parse


def path(kind: str | None = None) -> Parser:
    """A filesystem path made absolute; ``kind`` ``file`` / ``dir`` requires it to exist."""

    def parse(value: Any, ctx: Ctx) -> Path:
        raw = text(value, ctx)
        resolved = Path(os.path.abspath(ctx.base_dir / Path(raw).expanduser()))
        if kind == "file" and not resolved.is_file():
            raise Invalid("a file", f'no such file: "{printable(str(resolved))}"')
        if kind == "dir" and not resolved.is_dir():
            raise Invalid("a directory", f'no such directory: "{printable(str(resolved))}"')
        return resolved

    return parse


def relative_path(value: Any, ctx: Ctx) -> str:
    """A path inside the code directory: relative, no ``..``; ``""`` and ``.`` mean the top."""
    raw = parse_str(value).strip()
    if raw.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", raw):
        raise Invalid("a path relative to the code directory")
    parts = [p for p in re.split(r"[\\/]+", raw) if p not in ("", ".")]
    if ".." in parts:
        raise Invalid("a path inside the code directory (no \"..\")")
    return "/".join(parts)


def code_file(value: Any, ctx: Ctx) -> str:
    """A file inside the code directory (like ``requirements.txt``)."""
    result = relative_path(value, ctx)
    if not result:
        raise Invalid("a file path relative to the code directory")
    return result


def venv(value: Any, ctx: Ctx) -> str:
    raw = text(value, ctx)
    if raw.lower() in ("auto", "none"):
        return raw.lower()
    return str(path()(raw, ctx))


def command(value: Any, ctx: Ctx) -> str:
    raw = text(value, ctx)
    try:
        shlex.split(raw)
    except ValueError as exc:
        raise Invalid("a command line", f"cannot split the command line: {exc}") from None
    return raw


_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")


def git_url(value: Any, ctx: Ctx) -> str:
    raw = text(value, ctx)
    expected = 'a git URL like "https://github.com/org/repo.git" or "git@github.com:org/repo.git"'
    if any(c.isspace() for c in raw):
        raise Invalid(expected)
    if "://" in raw and urlsplit(raw).scheme not in _GIT_SCHEMES:
        raise Invalid(expected, f'expected {expected}; the scheme must be one of {", ".join(_GIT_SCHEMES)}')
    return raw


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_vars(value: Any, ctx: Ctx) -> dict[str, str]:
    """A mapping of environment variable names to string values (values are never echoed)."""
    if not isinstance(value, dict):
        raise Invalid("a mapping of environment variable names to values")
    if len(value) > MAX_ENTRIES:
        raise Invalid("a mapping of environment variable names to values",
                      f"{len(value):,} variables, above the limit of {MAX_ENTRIES:,}")
    result: dict[str, str] = {}
    for key, item in value.items():
        where = f"{ctx.path}.{key}"
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            ctx.add(where, "expected an environment variable name (letters, digits, _; not starting with a digit)")
        elif item is FAILED:
            continue
        elif isinstance(item, bool) or item is None or not isinstance(item, (str, int, float)):
            hint = ' (quote it: "true")' if isinstance(item, bool) else ' (write "" for empty)' if item is None else ""
            ctx.add(where, f"expected a string, got {describe(item, secret=True)}{hint}")
        elif (problem := env_value_problem(key, str(item))) is not None:
            ctx.add(where, problem)
        else:
            result[key] = str(item)
    return result


_QUEUE_KEYS = ("name", "weight", "concurrency", "requires", "aggregation", *FLOW_KEYS)


def queues(value: Any, ctx: Ctx) -> tuple[QueueSpec, ...]:
    """A list of queue specs (strings or mappings); a single string is a one-item list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise Invalid("a list of queues")
    if len(items) > MAX_QUEUES:
        raise Invalid("a list of queues", f"{len(items):,} queues, above the limit of {MAX_QUEUES:,} per agent")
    specs: list[QueueSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{ctx.path}[{i}]"
        if item is FAILED:
            continue
        try:
            spec = _queue_item(item, where, ctx)
        except Invalid as exc:
            ctx.add(where, exc.message(item))
            continue
        if spec is None:
            continue
        if spec.name in seen:
            ctx.add(where, f'duplicate queue "{spec.name}" (already {ctx.path}[{seen[spec.name]}])')
            continue
        seen[spec.name] = i
        specs.append(spec)
    return tuple(specs)


def _queue_item(item: Any, where: str, ctx: Ctx) -> QueueSpec | None:
    if isinstance(item, str):
        name, limit = parse_queue_string(item)
        return QueueSpec(name, 1, limit)
    if not isinstance(item, dict):
        raise Invalid(QUEUE_EXPECTED + ", or a mapping {name, weight, concurrency}")
    ok = True
    for key in item:
        if key not in _QUEUE_KEYS:
            ctx.add(f"{where}.{key}", unknown_key(str(key), _QUEUE_KEYS))
            ok = False
    fields: dict[str, Any] = {}
    for key, parse in (("name", _queue_name), ("weight", integer(1, MAX_WEIGHT)),
                       ("concurrency", integer(1, MAX_CONCURRENCY))):
        raw = item.get(key)
        if raw is None or raw is FAILED:
            if key == "name" and raw is None:
                ctx.add(f"{where}.name", 'required: the queue name, like "emails"')
                ok = False
            continue
        try:
            fields[key] = parse(raw, ctx)
        except Invalid as exc:
            ctx.add(f"{where}.{key}", exc.message(raw))
            ok = False
    if item.get("requires") not in (None, FAILED):
        try:
            fields["requires"] = parse_labels(item["requires"], "required labels")
        except Invalid as exc:
            ctx.add(f"{where}.requires", exc.message(item["requires"]))
            ok = False
    if item.get("aggregation") not in (None, FAILED):
        fields["aggregation"] = parse_aggregation(item["aggregation"], ctx.add, where)
        ok = ok and fields["aggregation"] is not None
    before = len(ctx.findings.problems)
    flow = parse_flow({k: v for k, v in item.items() if v is not FAILED}, ctx.add, where)
    ok = ok and len(ctx.findings.problems) == before
    if not ok or "name" not in fields:
        return None
    return QueueSpec(**fields, flow=flow)


def _queue_name(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str):
        raise Invalid('a queue name like "emails" or "inference.high"')
    name = value.strip()
    if ":" in name:
        base, _, suffix = name.partition(":")
        raise Invalid("a queue name", (
            f'"{printable(name, 60)}" is not a queue name: write "{printable(base, 40)}.{printable(suffix, 20)}" '
            "for a sub-queue, or set the limit with the concurrency key"))
    return check_queue_name(name)


def labels(value: Any, ctx: Ctx) -> tuple[str, ...]:
    return parse_labels(value)


def gpus(value: Any, ctx: Ctx) -> tuple[int, ...] | str:
    return parse_gpus(value)
