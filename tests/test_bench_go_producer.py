"""The benchmark's Go-default producer writes asynq's own bytes and keys (spec/asynq-wire.md)."""

from __future__ import annotations

import orjson

from agent.broker.messages import TaskMessage
from bench.go_producer import enqueue_go, go_default_message, message_check


def test_message_matches_the_spec_golden_vector():
    # spec §2.4: TaskMessage{type:"email:send", payload:'{"a":1}', id:"t1", queue:"default", retry:25, timeout:1800}
    assert go_default_message("email:send", b'{"a":1}', "t1", "default").hex() == (
        "0a0a656d61696c3a73656e6412077b2261223a317d1a027431220764656661756c74281940880e")


def test_defaults_of_a_go_client_and_ours_agree():
    msg = TaskMessage.FromString(go_default_message("noop", orjson.dumps({"n": 1}), "x", "q"))
    assert (msg.retry, msg.timeout, msg.deadline, msg.retention, msg.unique_key) == (25, 1800, 0, 0, "")
    assert message_check()["same_bytes"]


def test_enqueue_writes_asynq_keys(redis_url, r):
    n = 3
    enqueue_go(redis_url, n, ["a", "b"], "noop")
    assert r.smembers("asynq:queues") == {b"a", b"b"}
    ids = r.lrange("asynq:{a}:pending", 0, -1) + r.lrange("asynq:{b}:pending", 0, -1)
    assert len(ids) == n
    for task_id in r.lrange("asynq:{a}:pending", 0, -1):
        fields = r.hgetall(f"asynq:{{a}}:t:{task_id.decode()}")
        assert set(fields) == {b"msg", b"state", b"pending_since"} and fields[b"state"] == b"pending"
        assert TaskMessage.FromString(fields[b"msg"]).id == task_id.decode()
