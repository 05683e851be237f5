"""The JSON-lines protocol between the agent and a child process (see docs/protocol.md).

Encoding of requests, splitting of what a child writes (its protocol channel, its stdout)
into lines under a size limit, and classification of each line: ready, startup error, task
response, or plain child output.
Compatible with runqy's protocol: a child written for the runqy Python SDK works unchanged.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from agent.supervisor.outcome import Outcome
from agent.supervisor.task_request import TaskRequest

PROTOCOL_VERSION = 1
DEFAULT_LINE_LIMIT = 16 * 1024 * 1024
MAX_ERROR_CHARS = 8192
"""Longest error text an outcome carries (it is stored in the task hash)."""

_HEAD_BYTES = 1024


# -- agent -> child ------------------------------------------------------------------------


def encode_request(request: TaskRequest) -> bytes:
    """One request line: runqy's fields plus ``deadline`` / ``timeout``.

    A payload that is valid UTF-8 JSON is embedded as it is (newlines, which in valid JSON
    can only be whitespace, become spaces); any other payload is sent as ``"payload": null``
    plus ``"payload_b64"``, which task_sdk turns back into ``bytes``.
    """
    meta: dict[str, Any] = {
        "task_id": request.task_id,
        "type": request.type,
        "queue": request.queue,
        "retry_count": request.retry_count,
        "max_retry": request.max_retry,
    }
    if request.deadline is not None:
        meta["deadline"] = request.deadline
    if request.timeout is not None:
        meta["timeout"] = request.timeout
    if request.traceparent is not None:
        meta["traceparent"] = request.traceparent
    head = orjson.dumps(meta)[:-1]
    embedded = _payload_as_json(request.payload)
    if embedded is not None:
        return head + b',"payload":' + embedded + b"}\n"
    encoded = base64.b64encode(request.payload)
    return head + b',"payload":null,"payload_b64":"' + encoded + b'"}\n'


def encode_cancel(task_id: str) -> bytes:
    """Ask the child to cancel a running task (task_sdk only; runqy children do not know it)."""
    return b'{"cancel":' + orjson.dumps(task_id) + b"}\n"


def _payload_as_json(payload: bytes) -> bytes | None:
    if not payload:
        return None
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        if not _is_strict_json(payload):
            return None
    if b"\n" in payload or b"\r" in payload:
        payload = payload.replace(b"\n", b" ").replace(b"\r", b" ")
    return payload


def _is_strict_json(payload: bytes) -> bool:
    """Standard-library check for what orjson refuses but is valid JSON (huge integers)."""

    def reject(constant: str) -> Any:
        raise ValueError(constant)

    try:
        json.loads(payload.decode("utf-8"), parse_constant=reject)
    except (ValueError, RecursionError):
        return False
    return True


# -- child -> agent: framing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OversizedLine:
    """A line longer than the limit: discarded, except for its first bytes (``head``)."""

    size: int
    head: bytes


class LineSplitter:
    """Splits a byte stream into lines, never holding more than ``limit`` bytes of one line.

    A longer line is dropped as it streams past and reported once as ``OversizedLine``; the
    lines after it come through normally. ``\\r\\n`` endings are accepted.
    """

    def __init__(self, limit: int = DEFAULT_LINE_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"line limit must be at least 1 byte, got {limit}")
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._dropping: OversizedLine | None = None

    def feed(self, data: bytes) -> list[bytes | OversizedLine]:
        lines: list[bytes | OversizedLine] = []
        if self._dropping is not None:
            newline = data.find(b"\n")
            if newline < 0:
                self._dropping = OversizedLine(self._dropping.size + len(data), self._dropping.head)
                return lines
            lines.append(OversizedLine(self._dropping.size + newline, self._dropping.head))
            self._dropping = None
            data = data[newline + 1 :]
        buf = self._buf
        buf += data
        start = 0
        search = self._scanned
        while (newline := buf.find(b"\n", search)) >= 0:
            lines.append(self._line(bytes(buf[start:newline])))
            start = search = newline + 1
        if start:
            del buf[:start]
        if len(buf) > self.limit:
            self._dropping = OversizedLine(len(buf), bytes(buf[:_HEAD_BYTES]))
            buf.clear()
        self._scanned = len(buf)
        return lines

    def finish(self) -> list[bytes | OversizedLine]:
        """At end of stream: the last line, if it had no newline."""
        if self._dropping is not None:
            tail: list[bytes | OversizedLine] = [self._dropping]
            self._dropping = None
            return tail
        if self._buf:
            tail = [self._line(bytes(self._buf))]
            self._buf.clear()
            self._scanned = 0
            return tail
        return []

    def _line(self, line: bytes) -> bytes | OversizedLine:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.limit:
            return OversizedLine(len(line), line[:_HEAD_BYTES])
        return line


_TASK_ID_HEAD = re.compile(rb'^\s*\{\s*"task_id"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def task_id_of_head(head: bytes) -> str | None:
    """The task id an oversized response starts with (task_sdk and runqy put it first)."""
    match = _TASK_ID_HEAD.match(head)
    if match is None:
        return None
    try:
        value = json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


# -- child -> agent: messages --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """``{"status":"ready"}``; task_sdk adds its protocol version, task types and limits."""

    protocol: int | None = None
    task_types: tuple[str, ...] | None = None
    max_in_flight: int | None = None
    pid: int | None = None
    slots: int | None = None  #: handlers the child runs at once (task_sdk >= slots)
    #: batched task types: type -> (largest batch, seconds to wait for it to fill)
    batches: dict[str, tuple[int, float]] | None = None


@dataclass(frozen=True, slots=True)
class StartupFailed:
    """``{"status":"error","error":"..."}``: the child could not start; ``error`` verbatim."""

    error: str


@dataclass(slots=True)  # not frozen: built per task, and frozen init costs 4x
class Response:
    """A task's answer. Failure iff ``error`` is a non-empty string (runqy's rule)."""

    task_id: str
    error: str | None
    retry: bool
    has_result: bool
    result: Any = None
    retry_in: float | None = None
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """Any other ``{"status": ...}`` object (progress, log): informational."""

    message: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Output:
    """A line that is not a protocol message: the child's own output, to be logged."""

    text: str
    note: str = ""


ChildMessage = Ready | StartupFailed | Response | StatusMessage | Output

_INVALID = object()
_MARKERS = (b'{"task_id"', b'{"status"')


def parse_line(line: bytes) -> list[ChildMessage]:
    """Classify one line a child wrote; never raises.

    A line where output printed without a newline ran into a protocol message
    (``hello{"task_id": ...}``, the runqy failure mode) is split into the output and the
    message, so the task still gets its answer.
    """
    line = line.strip()
    if not line:
        return []
    value = _loads(line)
    if value is not _INVALID:
        return [_classify(value, line)]
    for marker in _MARKERS:
        start = line.find(marker)
        if start > 0:
            value = _loads(line[start:])
            if isinstance(value, dict):
                return [Output(_text(line[:start])), _classify(value, line[start:])]
    return [Output(_text(line))]


def success_answer(line: bytes) -> tuple[str, Outcome] | None:
    """The common line, a task's success answer, read without the general classification:
    (task id, outcome) exactly as ``parse_line`` and ``outcome_from_response`` would give
    them, or None for any other line (which then takes the general path)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        return None
    task_id = value.get("task_id")
    if type(task_id) is not str or not task_id:
        return None
    error = value.get("error")
    if not (error is None or error is False or error == ""):
        return None
    if "result" not in value:
        return task_id, Outcome("success")
    try:
        return task_id, Outcome("success", result=encode_result(value["result"]))
    except ValueError:
        return None


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:  # what orjson refuses but Python's json writes: NaN, Infinity, huge integers
        return json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return _INVALID


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _classify(value: Any, line: bytes) -> ChildMessage:
    if not isinstance(value, dict):
        return Output(_text(line))
    if "task_id" in value:
        task_id = value["task_id"]
        if not isinstance(task_id, str) or not task_id:
            return Output(_text(line), note="a response whose task_id is not a non-empty string")
        return _response(task_id, value)
    status = value.get("status")
    if status == "ready":
        return _ready(value)
    if status == "error":
        error = value.get("error")
        return StartupFailed(error if isinstance(error, str) and error else "unknown error")
    if isinstance(status, str):
        return StatusMessage(value)
    return Output(_text(line))


def _json_text(value: Any) -> str:
    """``value`` as JSON text; the standard library's encoder for what orjson refuses (an
    integer beyond 64 bits, which a line parsed by the standard library may hold)."""
    try:
        return orjson.dumps(value).decode(errors="replace")
    except TypeError:
        return json.dumps(value, default=repr)


def _response(task_id: str, value: dict[str, Any]) -> Response:
    error = value.get("error")
    if error is None or error is False or error == "":
        text = None
    elif isinstance(error, str):
        text = error
    else:  # runqy would drop this line and leave the task hanging; record it instead
        text = _json_text(error)
    error_type = value.get("error_type")
    return Response(
        task_id=task_id,
        error=text,
        retry=value.get("retry") is True,
        has_result="result" in value,
        result=value.get("result"),
        retry_in=_retry_in(value.get("retry_in")),
        error_type=error_type if isinstance(error_type, str) else None,
    )


def _ready(value: dict[str, Any]) -> Ready:
    protocol = value.get("protocol")
    types = value.get("task_types")
    limit = value.get("max_in_flight")
    pid = value.get("pid")
    slots = value.get("slots")
    return Ready(
        protocol=protocol if _is_int(protocol) else None,
        task_types=tuple(t for t in types if isinstance(t, str))
        if isinstance(types, list)
        else None,
        max_in_flight=limit if _is_int(limit) and limit >= 1 else None,
        pid=pid if _is_int(pid) else None,
        slots=slots if _is_int(slots) and slots >= 1 else None,
        batches=batch_specs(value.get("batch")),
    )


def batch_specs(value: Any) -> dict[str, tuple[int, float]] | None:
    """The ready message's ``batch`` member (``{type: {"size": n, "max_wait": s}}``);
    entries that do not make sense are left out (those tasks then run one at a time)."""
    if not isinstance(value, dict):
        return None
    specs: dict[str, tuple[int, float]] = {}
    for name, spec in value.items():
        if not isinstance(spec, dict):
            continue
        size, wait = spec.get("size"), spec.get("max_wait", 0)
        if _is_int(size) and size >= 1 and isinstance(wait, (int, float)) and not isinstance(
                wait, bool) and 0 <= wait <= 60:
            specs[str(name)] = (size, float(wait))
    return specs or None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _retry_in(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    delay = float(value)
    return delay if math.isfinite(delay) and delay >= 0 else None


# -- meaning of a response -----------------------------------------------------------------


def outcome_from_response(response: Response) -> Outcome:
    """The outcome a response asks for.

    ``error`` set: ``retry: true`` -> retry (after ``retry_in`` if given), otherwise archive
    (runqy: an absent ``retry`` means a permanent failure). No error: success, with the
    result JSON-encoded (``None`` if the child sent no ``result`` field).
    """
    if response.error is not None:
        if response.retry:
            return Outcome("retry", error=clip_error(response.error), retry_in=response.retry_in)
        return Outcome("archive", error=clip_error(response.error))
    if not response.has_result:
        return Outcome("success", result=None)
    try:
        return Outcome("success", result=encode_result(response.result))
    except ValueError as exc:
        return Outcome("archive", error=f"ResultNotSerializable: {exc}")


def encode_result(value: Any) -> bytes:
    """JSON bytes for a decoded result: orjson, or the standard library for huge integers."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"the result cannot be encoded as JSON ({exc})") from None


def clip_error(text: str) -> str:
    """``text``, cut to ``MAX_ERROR_CHARS``."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS - 16] + " ... (truncated)"
