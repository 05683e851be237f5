"""Child protocol lines: whatever a child prints, parsing never raises and never loses a line;
forged answers (own, neighbours' and unknown ids, duplicated, huge, malformed) answer at most
the task they name on the protocol channel, and nothing on a task_sdk child's stdout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.supervisor import Child, ChildSpec, build_child_env
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

CHILDREN = Path(__file__).resolve().parents[1] / "children"

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


# -- forged answers: what a child writes, on which channel, and what the agent makes of it ---

HELD = ("t0", "t1", "t2")  # tasks the child runs (t0's handler writes, t1 and t2 are neighbours)
LIMIT = 1024  # the child's line limit: huge lines are cheap to make


def _answer_line(task_id, fields) -> bytes:
    return json.dumps({"task_id": task_id, **fields}, allow_nan=True).encode()


task_ids = st.one_of(st.sampled_from([*HELD, "ghost"]),  # own, neighbours', unknown
                     st.sampled_from(["", 0, 1.5, None, True, [], {}]),  # wrong types
                     st.text(max_size=8))
answers = st.builds(_answer_line, task_ids, st.fixed_dictionaries(
    {}, optional={"result": json_values, "error": json_values, "retry": json_values,
                  "retry_in": json_values, "error_type": json_values}))
protocol_lines = st.one_of(
    answers,
    answers.map(lambda line: line + line),  # two answers run together on one line
    st.tuples(st.binary(max_size=30), answers).map(b"".join),  # output run into an answer
    st.builds(lambda tid, n: _answer_line(tid, {"result": "x" * n}),  # huge answers
              st.sampled_from([*HELD, "ghost"]), st.integers(LIMIT, 3 * LIMIT)),
    st.binary(max_size=300),  # not JSON
    st.integers(LIMIT, 3 * LIMIT).map(lambda n: b"y" * n),  # huge, not JSON
    json_values.map(_line_of),  # JSON, but no object
    protocol_objects.map(_line_of),  # ready, error, status and the rest
).map(lambda line: line.replace(b"\n", b" "))
cuts = st.lists(st.integers(1, 200), min_size=1, max_size=4)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured_logs():
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("agent.child", "agent.supervisor.child")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _child_holding_tasks(channel: str) -> tuple[Child, dict[str, list[Outcome]]]:
    """A child (no process) whose protocol runs on ``channel``, running HELD."""
    child = Child(ChildSpec(argv=["task-code"], cwd=Path("."), queue="fuzz", line_limit=LIMIT,
                            threads=len(HELD)))
    child.state, child.channel = "ready", channel
    child.ledger.slots = len(HELD)
    outcomes: dict[str, list[Outcome]] = {task_id: [] for task_id in HELD}
    for task_id in HELD:
        child.ledger.hold(TaskRequest(task_id=task_id, type="t", timeout=60.0),
                          outcomes[task_id].append, time.time())
    return child, outcomes


def _feed(write, line: bytes, cut_points: list[int]) -> None:
    data, start = line + b"\n", 0
    for cut in cut_points:
        write(data[start:start + cut])
        start += cut
    write(data[start:])


@bounded(300)
@given(st.lists(st.tuples(protocol_lines, cuts), min_size=1, max_size=12),
       st.sampled_from(["private", "stdout"]))
def test_every_line_on_the_answer_channel_is_an_outcome_or_a_log_line(lines, channel):
    """Forged, duplicated, unknown, huge or malformed: each line answers a task it names (at
    most once, with a valid outcome) or is logged. Nothing raises, nothing vanishes, and a
    task nobody answered is still held."""
    child, outcomes = _child_holding_tasks(channel)
    write = child._channel_data if channel == "private" else child._stdout_data
    with _captured_logs() as records:
        for line, cut_points in lines:
            before = len(records) + sum(map(len, outcomes.values()))
            _feed(write, line, cut_points)
            if line.strip():
                assert len(records) + sum(map(len, outcomes.values())) > before, line
    for task_id, got in outcomes.items():
        assert len(got) <= 1, (task_id, got)  # a duplicated answer is logged, not obeyed
        assert len(got) == 1 or task_id in child._pending  # nothing lost
        for outcome in got:
            assert outcome.kind in ("success", "retry", "archive")
            assert outcome.error is None or len(outcome.error) <= MAX_ERROR_CHARS
            if outcome.result is not None:
                json.loads(outcome.result)


@bounded(300)
@given(st.lists(st.tuples(protocol_lines, cuts), min_size=1, max_size=12))
def test_nothing_on_the_stdout_of_a_private_channel_child_answers_a_task(lines):
    """Once task_sdk's private channel is in use, stdout is output: every line is logged,
    even a well-formed answer for a task the child runs, and no task is answered."""
    child, outcomes = _child_holding_tasks("private")
    with _captured_logs() as records:
        for line, cut_points in lines:
            before = len(records)
            _feed(child._stdout_data, line, cut_points)
            if line.strip():
                assert len(records) > before, line
    assert outcomes == {task_id: [] for task_id in HELD}
    assert sorted(child._pending) == sorted(HELD) and child.channel == "private"


WAYS = ["print", "stdout_write", "fd1", "subprocess_echo", "early_stdout", "helper_process"]
own_answers = st.builds(lambda fields: _answer_line("%OWN%", fields), st.fixed_dictionaries(
    {}, optional={"result": json_values, "error": json_values, "retry": st.booleans()}))
written = st.lists(st.one_of(own_answers, protocol_lines), max_size=6).map(
    lambda lines: b"".join(line + b"\n" for line in lines))


def test_a_real_child_obeys_nothing_its_handler_writes():
    """A task_sdk child (tests/children/forger.py) whose handler writes forged answers for its
    own task, and any other protocol lines, every way a process can: the task gets its real
    result, and the child lives on."""
    with asyncio.Runner() as runner:
        child = Child(ChildSpec(argv=[sys.executable, str(CHILDREN / "forger.py")], cwd=CHILDREN,
                                env=build_child_env({}, {}, None), queue="fuzz",
                                line_limit=LIMIT, stop_grace=1.0))
        runner.run(child.start())
        try:
            @bounded(40)
            @given(way=st.sampled_from(WAYS), data=written)
            def check(way: str, data: bytes) -> None:
                request = TaskRequest(task_id=f"own-{time.monotonic_ns()}", type="write",
                                      payload=json.dumps({"way": way, "settle": 0.02, "data":
                                                          base64.b64encode(data).decode()}).encode(),
                                      timeout=30.0)
                outcome = runner.run(child.run(request))
                assert outcome == Outcome("success", result=b'{"real":true}'), (way, data)

            check()
            assert child.exit is None and child.channel == "private"
        finally:
            runner.run(child.stop(grace=1.0))
