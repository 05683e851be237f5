"""Parsers for single config values: durations, sizes, queue specs, addresses and plain scalars.

Each parser takes the raw value (from YAML, or a string from an environment variable, which is
why numbers and booleans are also accepted as strings) and returns the typed value, or raises
:class:`Invalid` describing what was expected. The caller adds the path and what was found.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from agent.logs import redact_url

from .limits import MAX_CONCURRENCY, MAX_DURATION, MAX_SIZE, queue_name_problem

__all__ = [
    "Invalid",
    "describe",
    "format_duration",
    "parse_addr",
    "parse_bool",
    "parse_duration",
    "parse_int",
    "parse_listen",
    "parse_queue_string",
    "parse_redis_url",
    "parse_size",
    "parse_str",
    "printable",
    "split_host_port",
]


class Invalid(ValueError):
    """A value that does not parse.

    Attributes:
        expected: what a valid value looks like (``a duration like "30s" or "1m"``); the message
            becomes ``expected <expected>, got <what was found>``.
        detail: a complete message used instead, when "expected X, got Y" would not say enough.
    """

    def __init__(self, expected: str, detail: str | None = None) -> None:
        super().__init__(detail or expected)
        self.expected = expected
        self.detail = detail

    def message(self, value: Any, secret: bool = False) -> str:
        return self.detail or f"expected {self.expected}, got {describe(value, secret)}"


def describe(value: Any, secret: bool = False) -> str:
    """How a found value reads in an error message; for secrets only its type is named."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean" if secret else f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if secret:
        return "a string" if isinstance(value, str) else "a number"
    if isinstance(value, str):
        return printable(json.dumps(_shorten(_without_credentials(value)), ensure_ascii=False))
    return _shorten(repr(value))


def _without_credentials(text: str) -> str:
    """``text`` with URL credentials masked; a URL too broken to parse (``https://u:pa/ss@host``)
    loses everything between ``://`` and its last ``@``, where credentials would be."""
    text = redact_url(text)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest:
        text = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return text


def printable(text: str, limit: int | None = None) -> str:
    """``text`` safe to print in a message: characters that are not printable (controls, bidi
    overrides, line breaks) as ``\\uXXXX`` escapes, and at most ``limit`` characters."""
    if limit is not None:
        text = _shorten(text, limit)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _shorten(text: str, limit: int = 60) -> str:
    # Secrets inside URLs are masked before this cut, which could otherwise split a password
    # from the "@" that marks it.
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Invalid("a string")


_INT = re.compile(r"[+-]?[0-9]+")


def parse_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (or a string of digits); ``minimum`` and ``maximum`` are inclusive."""
    if minimum is not None and maximum is not None:
        expected = f"an integer from {minimum} to {_number(maximum)}"
    elif maximum is not None:
        expected = f"an integer <= {_number(maximum)}"
    elif minimum == 1:
        expected = "a positive integer"
    elif minimum == 0:
        expected = "an integer >= 0"
    else:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise Invalid(expected)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        if len(value.strip()) > 30:  # int() refuses thousands of digits; no bound is that big
            raise Invalid(expected)
        value = int(value.strip())
    if not isinstance(value, int):
        raise Invalid(expected)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise Invalid(expected)
    return value


def _number(n: int) -> str:
    return f"{n:,}" if n >= 10_000 else str(n)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise Invalid("true or false")


_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
DURATION_EXPECTED = 'a duration like "30s" or "1m"'


def parse_duration(value: Any, minimum: float | None = 0.0) -> float:
    """A Go-style duration (``300ms``, ``1.5h``, ``2h45m``, ``0``) or a number of seconds.

    Returns:
        the duration in seconds.

    Raises:
        Invalid: unparsable, or below ``minimum`` (inclusive; None for no limit).
    """
    expected = DURATION_EXPECTED if minimum is None else (
        f"a non-negative {DURATION_EXPECTED[2:]}" if minimum == 0 else f"{DURATION_EXPECTED} (> 0)")
    if isinstance(value, bool):
        raise Invalid(expected)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        seconds = float(value.strip())
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        seconds = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    else:
        raise Invalid(expected)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise Invalid(expected)
    if minimum is not None and (seconds < minimum or (minimum > 0 and seconds == 0)):
        raise Invalid(expected)
    if abs(seconds) > MAX_DURATION:
        raise Invalid(f"{expected}, at most {format_duration(MAX_DURATION)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable Go-style spelling: ``8s``, ``1m30s``, ``250ms``, ``0s``."""
    if seconds == 0:
        return "0s"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if minutes else "")
    if secs or not text:
        text += f"{round(secs, 3):g}s"
    return sign + text


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
SIZE_EXPECTED = 'a size like "512MB" or "1GiB"'


def parse_size(value: Any) -> int:
    """A size in bytes: a number, or a number with a unit (KB/MB/GB/TB = 1000^n, KiB/MiB/GiB/TiB = 1024^n)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        unit = _SIZE_UNITS.get(m.group(2).lower())
        if unit is None:
            raise Invalid(SIZE_EXPECTED)
        number = float(m.group(1)) * unit
        if number > MAX_SIZE:
            raise Invalid(f"{SIZE_EXPECTED}, at most 1024TiB")
        size = int(number)
    else:
        raise Invalid(SIZE_EXPECTED)
    if size <= 0:
        raise Invalid(f"{SIZE_EXPECTED} (> 0)")
    if size > MAX_SIZE:
        raise Invalid(f"{SIZE_EXPECTED}, at most 1024TiB")
    return size


# A queue name: no whitespace, no ':' (per-queue limit separator), no braces (asynq wraps the
# name in a Redis hash tag, {name}), and no empty part around a '.' (sub-queue separator).
_QUEUE_NAME = re.compile(r"[^\s:{}.]+(?:\.[^\s:{}.]+)*")
QUEUE_EXPECTED = 'a queue name like "emails", "inference.high" or "transcoding:3"'


def check_queue_name(name: str) -> str:
    problem = queue_name_problem(name)
    if problem is not None:
        raise Invalid(QUEUE_EXPECTED, problem)
    if not _QUEUE_NAME.fullmatch(name):
        raise Invalid('a queue name like "emails" or "inference.high" (no spaces, braces or colons)')
    return name


def parse_queue_string(text: str) -> tuple[str, int | None]:
    """``name`` or ``name:N`` (N a positive per-queue concurrency limit) → (name, limit)."""
    text = text.strip()
    if ":" not in text:
        return check_queue_name(text), None
    name, _, suffix = text.partition(":")
    if suffix.isascii() and suffix.isdigit():
        if len(suffix) > 9 or not 0 < int(suffix) <= MAX_CONCURRENCY:
            raise Invalid(QUEUE_EXPECTED, f'the limit in "{printable(text, 60)}" must be an integer from 1 '
                          f"to {MAX_CONCURRENCY:,}")
        check_queue_name(name)
        return name, int(suffix)
    check_queue_name(name)  # a name that is wrong anyway: say why, rather than suggest "name.suffix"
    raise Invalid(QUEUE_EXPECTED, (
        f'"{printable(text, 60)}" is not a queue spec: write "{printable(name, 40)}.{printable(suffix, 20)}" '
        f'for a sub-queue, or "{printable(name, 40)}:N" (N a positive integer) to limit the queue\'s '
        "concurrency"))


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(text)  # a bare IPv6 address needs brackets
    if any(c.isspace() for c in host):
        raise ValueError(text)
    return host, int(port)


LISTEN_EXPECTED = '"host:port" (port 0-65535) like "127.0.0.1:9465", or "off"'


def parse_listen(value: Any) -> str | None:
    """``host:port`` → the normalised address (empty host = all interfaces); ``off`` → None."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false")):
        return None
    if not isinstance(value, str):
        raise Invalid(LISTEN_EXPECTED)
    try:
        host, port = split_host_port(value.strip())
    except ValueError:
        raise Invalid(LISTEN_EXPECTED) from None
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


ADDR_EXPECTED = '"host:port" like "localhost:6379"'


def parse_addr(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(ADDR_EXPECTED)
    try:
        host, port = split_host_port(value.strip())
    except ValueError:
        raise Invalid(ADDR_EXPECTED) from None
    if not host or port == 0:
        raise Invalid(ADDR_EXPECTED)
    return value.strip()


REDIS_URL_EXPECTED = 'a URL like "redis://host:6379/0", "rediss://..." or "unix:///path/redis.sock"'
_TOPOLOGY_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def parse_redis_url(value: Any) -> str:
    """A redis-py URL with scheme ``redis``, ``rediss`` or ``unix`` (the value may hold a password)."""
    if not isinstance(value, str):
        raise Invalid(REDIS_URL_EXPECTED)
    text = value.strip()
    if text.split("://", 1)[0].lower() in _TOPOLOGY_SCHEMES:  # Redis Cluster / Sentinel
        from agent.broker.connection import InvalidRedisURL, parse_url

        try:
            parse_url(text)
        except InvalidRedisURL as exc:
            raise Invalid(REDIS_URL_EXPECTED, str(exc)) from None
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        shown = f'"{parts.scheme}"' if parts.scheme else "none"
        raise Invalid(REDIS_URL_EXPECTED, (
            f"expected {REDIS_URL_EXPECTED}; the scheme must be redis, rediss or unix, got {shown}"))
    try:
        _ = parts.port
    except ValueError:
        raise Invalid(REDIS_URL_EXPECTED, f"expected {REDIS_URL_EXPECTED}; the port is not a number in 1-65535") from None
    if parts.scheme == "unix" and not parts.path:
        raise Invalid(REDIS_URL_EXPECTED, 'a unix URL needs a socket path: "unix:///run/redis.sock"')
    if parts.scheme != "unix" and "@" in parts.path:
        raise Invalid(REDIS_URL_EXPECTED, 'the URL has an "@" after a "/": write a "/" in the user name or '
                      'password as %2F')
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise Invalid(REDIS_URL_EXPECTED, f"the database in a redis URL path must be a number, got {db!r}")
    return text


HTTP_URL_EXPECTED = 'an http(s) URL like "https://control.example.com"'


def parse_http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(HTTP_URL_EXPECTED)
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(HTTP_URL_EXPECTED)
    try:
        _ = parts.port
    except ValueError:
        raise Invalid(HTTP_URL_EXPECTED) from None
    return text.rstrip("/")  # runqy appends "/worker/register" verbatim: avoid "//worker"
