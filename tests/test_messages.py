"""Golden vectors from the wire spec: our encoder must produce these bytes exactly."""

from __future__ import annotations

import pytest

from agent.broker.messages import (
    MessageDecodeError,
    ServerInfo,
    TaskMessage,
    WorkerInfo,
    decode_task_message,
    encode,
    utf8_safe,
)


def test_task_message_golden():
    m = TaskMessage(type="email:send", payload=b'{"a":1}', id="t1", queue="default", retry=25, timeout=1800)
    assert encode(m).hex() == "0a0a656d61696c3a73656e6412077b2261223a317d1a027431220764656661756c74281940880e"
    m.retried, m.error_msg, m.last_failed_at = 1, "boom", 1700000000
    assert encode(m).hex() == ("0a0a656d61696c3a73656e6412077b2261223a317d1a027431220764656661756c74"
                               "281930013a04626f6f6d40880e5880e2cfaa06")


def test_task_message_all_fields_golden():
    m = TaskMessage(type="x", id="t2", queue="q", deadline=1700000000, unique_key="asynq:{q}:unique:x:",
                    retention=3600, completed_at=1700000000, group_key="g")
    m.headers["k"] = "v"
    assert encode(m).hex() == ("0a01781a0274322201714880e2cfaa0652136173796e713a7b717d3a756e697175653a"
                               "783a60901c6880e2cfaa067201677a060a016b120176")


def test_server_and_worker_info_golden():
    s = ServerInfo(host="h", pid=42, server_id="sid", concurrency=10, status="active", active_worker_count=1)
    s.queues["default"] = 1
    s.start_time.seconds = 1700000000
    assert encode(s).hex() == ("0a0168102a1a03736964200a2a0b0a0764656661756c7410013a06616374697665420608"
                               "80e2cfaa064801")
    w = WorkerInfo(host="h", pid=42, server_id="sid", task_id="t1", task_type="email:send",
                   task_payload=b"{}", queue="default")
    w.start_time.seconds = 1700000000
    w.deadline.seconds = 1700001800
    assert encode(w).hex() == ("0a0168102a1a03736964220274312a0a656d61696c3a73656e6432027b7d3a0764656661"
                               "756c7442060880e2cfaa064a060888f0cfaa06")


def test_negative_int_is_ten_byte_varint():
    assert encode(TaskMessage(deadline=-5)).hex() == "48fbffffffffffffffff01"


def test_last_occurrence_wins_and_zero_values_accepted():
    data = encode(TaskMessage(type="a", retry=3)) + bytes.fromhex("2807") + bytes.fromhex("3000")
    m = decode_task_message(data)
    assert (m.type, m.retry, m.retried) == ("a", 7, 0)


@pytest.mark.parametrize("data", [b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\xff\xff\xff"])
def test_invalid_messages_raise_a_clear_error(data):
    with pytest.raises(MessageDecodeError, match="undecodable asynq TaskMessage"):
        decode_task_message(data)


def test_utf8_safe():
    assert utf8_safe("ok é") == "ok é"
    assert utf8_safe(b"a\xffb") == "a\ufffdb"
    assert utf8_safe("a\ud800b") == "a\ufffdb"
