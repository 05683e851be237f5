"""A producer that writes exactly what a Go ``asynq.Client`` writes with default options.

``client.Enqueue(asynq.NewTask(type, payload), asynq.Queue(q))`` with no other option
(spec/asynq-wire.md §3.1): MaxRetry 25, Timeout 30 min (neither Timeout nor Deadline given),
no deadline, Retention 0, a v4 UUID, no unique lock, no group, no headers. Its
``TaskMessage`` is encoded here by hand, as protobuf-go does (the non-zero fields in
field-number order; the spec's first golden vector), then ``SADD asynq:queues q`` and
asynq's own ``enqueueCmd`` script (§4.1), not ours. Loading is pipelined (the Go client makes a
round trip per task); the keys it leaves are the same.

The ``go_producer`` section drains the same number of no-op tasks written by this producer
and by our ``Client``, in turns (ours, Go's, Go's, ours ...), in the short-task configuration:
the agent must not treat the Go producer's tasks any slower (issue 20: within 10 %).
"""

from __future__ import annotations

import time
import uuid

import orjson
import redis

# asynq's enqueueCmd (internal/rdb/rdb.go): KEYS t:<id>, pending; ARGV msg, id, now (ns)
ENQUEUE_CMD = """
if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
end
redis.call("HSET", KEYS[1],
           "msg", ARGV[1],
           "state", "pending",
           "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
return 1
"""

GO_DEFAULT_RETRY = 25
GO_DEFAULT_TIMEOUT = 1800  # seconds: Timeout(30 * time.Minute), applied when neither is given


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 are sign-extended to 64 bits (never the case here)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    return bytes([tag]) + _varint(len(data)) + data


def go_default_message(task_type: str, payload: bytes, task_id: str, queue: str) -> bytes:
    """The ``TaskMessage`` bytes of a Go default-options enqueue (proto3: zero values omitted;
    fields 1 type, 2 payload, 3 id, 4 queue, 5 retry, 8 timeout)."""
    out = _field(0x0A, task_type.encode()) + (_field(0x12, payload) if payload else b"")
    out += _field(0x1A, task_id.encode()) + _field(0x22, queue.encode())
    return out + b"\x28" + _varint(GO_DEFAULT_RETRY) + b"\x40" + _varint(GO_DEFAULT_TIMEOUT)


def enqueue_go(url: str, n: int, queues: list[str], task_type: str, batch: int = 1000) -> float:
    """Write ``n`` no-op tasks (payload ``{"n": i}``, JSON as Go's json.Marshal writes it)
    round-robin over ``queues``; returns the seconds taken."""
    client = redis.Redis.from_url(url)
    try:
        script = client.register_script(ENQUEUE_CMD)
        t0 = time.perf_counter()
        for queue in queues:
            client.sadd("asynq:queues", queue)
        for lo in range(0, n, batch):
            pipe = client.pipeline(transaction=False)
            for i in range(lo, min(n, lo + batch)):
                queue = queues[i % len(queues)]
                task_id = str(uuid.uuid4())
                msg = go_default_message(task_type, orjson.dumps({"n": i}), task_id, queue)
                script(keys=[f"asynq:{{{queue}}}:t:{task_id}", f"asynq:{{{queue}}}:pending"],
                       args=[msg, task_id, time.time_ns()], client=pipe)
            codes = pipe.execute()
            if any(int(code) != 1 for code in codes):
                raise RuntimeError(f"the Go-style enqueue refused a task: {codes[:5]}")
        return time.perf_counter() - t0
    finally:
        client.close()


def message_check() -> dict:
    """Our client's default message against the Go one for the same task: equal bytes?"""
    from agent.broker.options import EnqueueOptions, build_message

    task_id, payload = str(uuid.uuid4()), orjson.dumps({"n": 1})
    ours = build_message("noop", payload, EnqueueOptions(queue="bench", task_id=task_id))
    go = go_default_message("noop", payload, task_id, "bench")
    return {"go_bytes": len(go), "ours_bytes": len(ours.SerializeToString()),
            "same_bytes": go == ours.SerializeToString(),
            "same_fields": ours.ListFields() == type(ours).FromString(go).ListFields()}
