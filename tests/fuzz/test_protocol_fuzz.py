"""Child protocol lines: whatever a child prints, parsing never raises and never loses a line."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from agent.supervisor.outcome import Outcome
from agent.supervisor.protocol import (
    MAX_ERROR_CHARS,
    LineSplitter,
    Output,
    OversizedLine,
    Ready,
    Response,
    StartupFailed,
    StatusMessage,
    encode_request,
    outcome_from_response,
    parse_line,
    success_answer,
    task_id_of_head,
)
from agent.supervisor.task_request import TaskRequest
from tests.fuzz.settings import bounded

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)

protocol_objects = st.fixed_dictionaries(
    {}, optional={"task_id": st.one_of(st.text(), json_values), "status": st.one_of(
        st.sampled_from(["ready", "error", "progress"]), json_values),
        "error": json_values, "retry": json_values, "retry_in": json_values, "result": json_values,
        "error_type": json_values, "protocol": json_values, "task_types": json_values,
        "max_in_flight": json_values, "slots": json_values, "pid": json_values})


def _line_of(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


MESSAGE_TYPES = (Ready, StartupFailed, Response, StatusMessage, Output)


@bounded(400)
@given(st.one_of(st.binary(max_size=2000), protocol_objects.map(_line_of),
                 st.tuples(st.binary(max_size=50), protocol_objects.map(_line_of)).map(b"".join)))
def test_parse_line_never_raises_and_outcomes_are_valid(line):
    messages = parse_line(line)
    for message in messages:
        assert isinstance(message, MESSAGE_TYPES)
        if isinstance(message, Response):
            assert isinstance(message.task_id, str) and message.task_id
            outcome = outcome_from_response(message)
            assert isinstance(outcome, Outcome) and outcome.kind in ("success", "retry", "archive")
            if outcome.error is not None:
                assert len(outcome.error) <= MAX_ERROR_CHARS
            if outcome.retry_in is not None:
                assert outcome.retry_in >= 0
            if outcome.result is not None:
                json.loads(outcome.result)  # what is stored is JSON
        if isinstance(message, Output):
            assert isinstance(message.text, str)


@bounded(400)
@given(st.one_of(st.binary(max_size=200), protocol_objects.map(_line_of),
                 st.fixed_dictionaries({"task_id": st.text(min_size=1)},
                                       optional={"result": json_values, "error": json_values})
                 .map(_line_of),
                 st.tuples(st.binary(max_size=5), protocol_objects.map(_line_of)).map(b"".join)))
def test_success_fast_path_agrees_with_the_general_path(line):
    """Where the hot path reads a line (a success), it reads it as the general path does;
    any line it declines goes the general way."""
    general = parse_line(line)
    fast = success_answer(line)
    if fast is None:
        return
    assert len(general) == 1 and isinstance(general[0], Response)
    assert (general[0].task_id, outcome_from_response(general[0])) == fast


@bounded(200)
@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       st.integers(min_value=1, max_value=400), st.lists(st.integers(1, 97), min_size=1, max_size=10))
def test_line_splitter_keeps_every_line_under_the_limit(lines, limit, cuts):
    stream = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(limit)
    out, pos, i = [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out.extend(splitter.feed(stream[pos:pos + step]))
        pos, i = pos + step, i + 1
        assert len(splitter._buf) <= limit  # never holds more than the limit
    out.extend(splitter.finish())
    assert len(out) == len(lines)
    for got, line in zip(out, lines, strict=True):
        line = line[:-1] if line.endswith(b"\r") else line
        if len(line) > limit:
            assert isinstance(got, OversizedLine) and got.head == line[:len(got.head)]
        else:
            assert got == line


@bounded(300)
@given(st.binary(max_size=3000))
def test_task_id_of_head_never_raises(head):
    result = task_id_of_head(head)
    assert result is None or isinstance(result, str)


@bounded(300)
@given(payload=st.one_of(st.binary(max_size=4000), json_values.map(lambda v: json.dumps(v).encode())),
       task_type=st.text(max_size=40), task_id=st.text(min_size=1, max_size=40))
def test_request_is_one_json_line_for_any_payload(payload, task_type, task_id):
    line = encode_request(TaskRequest(task_id=task_id, type=task_type, payload=payload, queue="q",
                                      deadline=1e9, timeout=5.0))
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    decoded = json.loads(line)
    assert decoded["task_id"] == task_id and decoded["type"] == task_type
    if "payload_b64" in decoded:
        assert decoded["payload"] is None and base64.b64decode(decoded["payload_b64"]) == payload
    elif payload:  # valid JSON, embedded as it is
        assert json.dumps(decoded["payload"]) == json.dumps(json.loads(payload))
