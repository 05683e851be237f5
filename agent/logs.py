"""Logging setup for the agent: one handler, a human or JSON-lines format, and secret redaction.

Every module logs through ``logging.getLogger(__name__)``; only the CLI calls :func:`setup_logging`.
Structured fields travel as ``extra={...}`` and are printed as ``key=value`` (human) or as JSON
members (json).

Secrets (API keys, tokens, passwords) are registered once with :func:`register_secret`, which
``load_config`` does for every secret field. The :class:`SecretFilter` installed on the handler
replaces each registered value with ``***`` in the message, its arguments, the ``extra`` fields and
formatted tracebacks of every record, whichever logger it comes from.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import unquote

try:  # orjson is a dependency, but logging must still work where it is missing.
    import orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    orjson = None  # type: ignore[assignment]

__all__ = [
    "LEVELS",
    "FORMATS",
    "HumanFormatter",
    "JsonFormatter",
    "SecretFilter",
    "clear_secrets",
    "redact",
    "redact_url",
    "register_secret",
    "url_secrets",
    "setup_logging",
]

#: Accepted level names (``warn`` is read as ``warning``).
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR}
#: Accepted format names. ``auto`` is human on a TTY and json otherwise.
FORMATS = ("auto", "human", "json")

MASK = "***"
#: Shorter values are not registered: masking them would garble unrelated text.
MIN_SECRET_LENGTH = 4

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
# Libraries that log every request at INFO; they stay at WARNING unless the agent logs at DEBUG.
_CHATTY_LOGGERS = ("httpx", "httpcore", "urllib3", "git")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secrets_pattern: re.Pattern[str] | None = None
# scheme://userinfo@ : the userinfo runs to the last "@" before the path, query or fragment (an
# unencoded "@" in a password is read that way by urllib and redis-py too).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*)@")
# Query parameters that carry credentials: ?password=, ?sentinel_password=, ?token=, ?api_key= ...
_URL_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:[\w.\-]*(?:password|passwd|pwd|secret|token|credential|signature)[\w.\-]*"
    r"|api[_\-]?key|access[_\-]?key|key|sig|auth)=)(?P<value>[^&#\s\"'<>]+)", re.IGNORECASE)
# Schemes where a user without a password is an account name (git@), not a token.
_USER_IS_NAME = ("ssh://", "git+ssh://", "ssh+git://", "sftp://")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that every log record passing our handler masks it.

    Empty values and values shorter than ``MIN_SECRET_LENGTH`` characters are ignored.
    """
    global _secrets_pattern
    if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _secrets_pattern = None  # compiled at the next use: a file registering many is not quadratic


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets_pattern
    with _secrets_lock:
        _secrets.clear()
        _secrets_pattern = None


def _registered_pattern() -> re.Pattern[str] | None:
    global _secrets_pattern
    with _secrets_lock:
        if _secrets_pattern is None and _secrets:
            _secrets_pattern = _compile(_secrets)
        return _secrets_pattern


def _compile(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(values), key=len, reverse=True)  # longest first: overlapping secrets
    return re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """Return ``text`` with each secret replaced by ``***`` and URL passwords masked.

    Args:
        text: any text.
        secrets: the values to mask; the registered secrets when omitted.
    """
    if secrets is None:
        pattern = _registered_pattern()
    else:
        pattern = _compile(s for s in secrets if isinstance(s, str) and s)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return redact_url(text)


def redact_url(text: str) -> str:
    """Mask the credentials of every URL in ``text``.

    ``scheme://user:password@host`` keeps the user (``user:***@``); a user alone is masked too
    (``https://***@github.com``: a token is often given that way), except for ssh URLs
    (``ssh://git@host``); query parameters such as ``?password=``, ``?token=`` or ``?api_key=``
    keep their name only.
    """
    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _URL_SECRET_PARAM.sub(lambda m: m.group("head") + MASK, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{MASK}@"
    if not userinfo or scheme.lower() in _USER_IS_NAME:
        return match.group(0)
    return f"{scheme}{MASK}@"


def url_secrets(text: str) -> list[str]:
    """The credentials in the URLs of ``text`` (as written and percent-decoded), i.e. what
    :func:`redact_url` masks, to register or to mask where they appear outside a URL."""
    found: list[str] = []
    for match in _URL_USERINFO.finditer(text):
        user, colon, password = match.group("userinfo").partition(":")
        if colon:
            found.append(password)
        elif match.group("scheme").lower() not in _USER_IS_NAME:
            found.append(user)
    found += [m.group("value") for m in _URL_SECRET_PARAM.finditer(text)]
    values = [v for v in found if v] + [unquote(v) for v in found if v]
    return list(dict.fromkeys(values))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


class SecretFilter(logging.Filter):
    """Masks registered secrets in a record's message, arguments, extras and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


def _format_field(value: Any) -> str:
    text = value if isinstance(value, str) else _json_dumps(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _json_dumps(value: Any) -> str:
    if orjson is not None:
        try:
            return orjson.dumps(value, default=str).decode()
        except TypeError:  # e.g. non-str dict keys orjson refuses
            pass
    return json.dumps(value, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``2026-11-23 10:00:00.123 INFO  agent.runtime: message key=value`` (local time)."""

    _COLOURS = {"DEBUG": "\x1b[2m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created)
        level = f"{record.levelname:<5}"
        if self.colour and record.levelname in self._COLOURS:
            level = f"{self._COLOURS[record.levelname]}{level}\x1b[0m"
        line = f"{when:%Y-%m-%d %H:%M:%S}.{int(record.msecs):03d} {level} {record.name}: "
        line += record.getMessage()
        fields = _extras(record)
        if fields:
            line += " " + " ".join(f"{k}={_format_field(v)}" for k, v in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
        doc: dict[str, Any] = {
            "ts": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return _json_dumps(doc)


class _AgentHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we install so that a second ``setup_logging`` replaces it."""


def setup_logging(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """Configure the root logger: one stream handler, the chosen format, secret redaction.

    Calling it again replaces the handler installed by the previous call.

    Args:
        level: ``debug``, ``info``, ``warning`` (or ``warn``) or ``error``.
        fmt: ``auto`` (human on a TTY, JSON lines otherwise), ``human`` or ``json``.
        stream: where to write; ``sys.stderr`` by default.

    Raises:
        ValueError: for an unknown level or format.
    """
    stream = sys.stderr if stream is None else stream
    level_no = LEVELS.get(level.lower()) if isinstance(level, str) else None
    if level_no is None:
        raise ValueError(f"unknown log level {level!r}; expected one of debug, info, warning, error")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    tty = _isatty(stream)
    if fmt == "auto":
        fmt = "human" if tty else "json"
    handler = _AgentHandler(stream)
    colour = tty and not os.environ.get("NO_COLOR")
    handler.setFormatter(HumanFormatter(colour=colour) if fmt == "human" else JsonFormatter())
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _AgentHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level_no <= logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
