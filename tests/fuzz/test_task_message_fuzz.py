"""Task messages through a real Broker and Processor (real Redis, in-process handlers): random
bytes in ``msg``, invalid UTF-8, truncated and byte-flipped protobuf, fields with the wrong
wire type, a missing hash or ``msg`` field, a wrong ``state``, a message naming another queue
or ID, huge payloads and fields.

Every task is accounted for exactly once: completed, deleted after success (no retention),
retried, archived, or dropped as an orphan ID (no hash or no ``msg``). Every failure carries a
non-empty reason in a ``msg`` Go can decode, under the task's own ID and queue; a malformed
message is archived with its original bytes kept and one WARNING line. Nothing stays active
or leased, no slot stays taken, nothing is logged at ERROR, and the processor keeps running.
"""

from __future__ import annotations

import asyncio
import logging

import redis
from hypothesis import given
from hypothesis import strategies as st

from agent.broker import keys
from agent.broker.malformed import RAW_MSG_FIELD
from agent.broker.messages import MessageDecodeError, TaskMessage, decode_task_message, encode
from tests.fuzz.settings import bounded
from tests.test_malformed_messages import run_processor

QUEUE = "fuzz"


messages = st.builds(
    lambda type_, payload, retry, retried, timeout, deadline, retention, other_queue, other_id: dict(
        type=type_, payload=payload, retry=retry, retried=retried, timeout=timeout, deadline=deadline,
        retention=retention, other_queue=other_queue, other_id=other_id),
    st.sampled_from(["echo", "boom", "unknown"]) | st.text(max_size=12),
    st.binary(max_size=300) | st.sampled_from([b"\xff\xfe\xfd", b'{"a": 1}', b"\x00" * 10]),
    st.integers(0, 30), st.integers(0, 40), st.integers(0, 3600), st.sampled_from([0, 1, 2**40]),
    st.sampled_from([0, 0, 60]), st.booleans(), st.booleans())

#: (field number, wire type) pairs that contradict asynq.proto's declared types
#: (1 type, 3 id, 4 queue: strings; 5 retry, 8 timeout: varints).
WRONG_WIRE_TYPES = [(1, 0), (3, 0), (3, 5), (4, 1), (4, 0), (5, 2), (8, 2), (8, 5)]

entries = st.one_of(
    st.tuples(st.just("valid"), messages, st.sampled_from(["pending", "active", "weird", ""])),
    st.tuples(st.just("garbage"), st.binary(max_size=200), st.sampled_from(["pending", "zzz"])),
    st.tuples(st.just("invalid_utf8"), st.just(b"\n\x03\xff\xfe\xfd\x12\x00\x1a\x02id\"\x04fuzz"),
              st.just("pending")),
    st.tuples(st.just("missing_hash"), st.none(), st.none()),
    st.tuples(st.just("no_msg_field"), st.none(), st.just("pending")),
    st.tuples(st.just("huge"), st.integers(1 << 20, 4 << 20), st.just("pending")),
    st.tuples(st.just("truncated"), st.tuples(messages, st.floats(0, 1, exclude_max=True)), st.just("pending")),
    st.tuples(st.just("flipped"), st.tuples(messages, st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                          st.integers(0, 255)),
                                                                min_size=1, max_size=4)),
              st.just("pending")),
    st.tuples(st.just("wrong_type"), st.tuples(st.sampled_from(WRONG_WIRE_TYPES), st.booleans()),
              st.just("pending")),
    st.tuples(st.just("huge_field"), st.tuples(st.sampled_from(["type", "header", "foreign_id", "unique_key"]),
                                               st.integers(64 << 10, 512 << 10)), st.just("pending")),
)


def _message(n: int, data: dict) -> TaskMessage:
    return TaskMessage(type=data["type"], payload=data["payload"], retry=data["retry"],
                       retried=min(data["retried"], data["retry"]), timeout=data["timeout"],
                       deadline=data["deadline"], retention=data["retention"],
                       queue="elsewhere" if data["other_queue"] else QUEUE,
                       id=f"x{n}" if data["other_id"] else f"t{n}")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, value: bytes | int) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + _varint(int(value))
    if wire_type == 1:
        return tag + b"\x01" * 8
    if wire_type == 5:
        return tag + b"\x01" * 4
    data = value if isinstance(value, bytes) else str(value).encode()
    return tag + _varint(len(data)) + data


def _wrong_type(n: int, number: int, wire_type: int, instead: bool) -> bytes:
    """An echo task whose field ``number`` has ``wire_type``: instead of its right encoding
    (then the field reads as unset) or after it (then it is an unknown field, kept)."""
    right = {1: _field(1, 2, b"echo"), 3: _field(3, 2, f"t{n}".encode()), 4: _field(4, 2, QUEUE.encode()),
             5: _field(5, 0, 1), 8: _field(8, 0, 60)}
    wrong = _field(number, wire_type, 7 if wire_type == 0 else b"zz")
    return b"".join((wrong if instead else right[f] + wrong) if f == number else right[f] for f in right)


def _raw(n: int, kind: str, data) -> bytes | None:
    task_id = f"t{n}"
    if kind == "valid":
        return encode(_message(n, data))
    if kind in ("garbage", "invalid_utf8"):
        return data
    if kind == "huge":
        return encode(TaskMessage(type="echo", payload=b"x" * data, queue=QUEUE, id=task_id, retry=1, timeout=60))
    if kind == "truncated":
        fields, cut = data
        full = encode(_message(n, {**fields, "other_queue": False, "other_id": False}))
        return full[:int(len(full) * cut)]
    if kind == "flipped":
        fields, flips = data
        raw = bytearray(encode(_message(n, {**fields, "other_queue": False, "other_id": False})))
        for where, byte in flips:
            if raw:
                raw[int(len(raw) * where)] = byte
        return bytes(raw)
    if kind == "wrong_type":
        (number, wire_type), instead = data
        return _wrong_type(n, number, wire_type, instead)
    if kind == "huge_field":
        which, size = data
        msg = TaskMessage(type="echo", queue=QUEUE, id=task_id, retry=1, timeout=60)
        if which == "type":
            msg.type = "t" * size
        elif which == "header":
            msg.headers["h"] = "v" * size
        elif which == "foreign_id":
            msg.id = "f" * size
        else:
            msg.unique_key = "u" * size
        return encode(msg)
    return None


def _write(r: redis.Redis, n: int, kind: str, data, state) -> tuple[str, bytes | None]:
    task_id = f"t{n}"
    key = keys.task_key(QUEUE, task_id)
    raw = _raw(n, kind, data)
    if raw is not None:
        r.hset(key, mapping={"msg": raw, "state": state})
    elif kind == "no_msg_field":
        r.hset(key, mapping={"state": state})
    r.lpush(keys.pending(QUEUE), task_id)
    return task_id, raw


def _surely_malformed(kind: str, data) -> bool:
    """Entries malformed whatever hypothesis drew: another ID or queue, not decodable, or an
    ID or queue that reads as unset."""
    if kind == "valid":
        return data["other_queue"] or data["other_id"]
    if kind == "invalid_utf8":
        return True
    if kind == "wrong_type":
        (number, _), instead = data
        return instead and number in (3, 4)
    return kind == "huge_field" and data[0] == "foreign_id"


@bounded(40)
@given(st.lists(entries, min_size=1, max_size=12))
def test_bad_task_messages_are_processed_or_archived_with_a_reason_never_lost(redis_url, caplog, items):
    caplog.set_level(logging.WARNING)
    caplog.clear()
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    written = [_write(r, n, *item) for n, item in enumerate(items)]
    succeeded: list[str] = []

    async def echo(payload, task):
        succeeded.append(task.id)
        return {"n": len(payload)}

    async def boom(payload, task):
        raise ValueError("boom")

    state = asyncio.run(run_processor(redis_url, QUEUE, {"echo": echo, "boom": boom}))
    assert state["alive"], "the processor loop died"
    assert state["in_flight"] == 0 and all(v == 0 for v in state["per_queue"].values()), state
    assert r.llen(keys.pending(QUEUE)) == 0
    assert r.llen(keys.active(QUEUE)) == 0, r.lrange(keys.active(QUEUE), 0, -1)
    assert r.zcard(keys.lease(QUEUE)) == 0
    errors = [rec.getMessage()[:300] for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, errors

    where = {name: {m.decode() for m in r.zrange(getattr(keys, name)(QUEUE), 0, -1)}
             for name in ("completed", "retry", "archived")}
    orphans = deleted = 0
    for (task_id, raw), (kind, data, _) in zip(written, items, strict=True):
        fields = r.hgetall(keys.task_key(QUEUE, task_id))
        if kind in ("missing_hash", "no_msg_field"):
            assert not any(task_id in ids for ids in where.values())  # dropped as an orphan ID
            orphans += 1
            continue
        if not fields:  # success without retention: deleted, as asynq does
            assert task_id in succeeded, (kind, task_id)
            deleted += 1
            continue
        [found] = [s for s, ids in where.items() if task_id in ids]
        assert fields[b"state"].decode() == found
        try:
            msg = decode_task_message(fields[b"msg"])  # what Go's Inspector reads
        except MessageDecodeError as exc:
            raise AssertionError(f"{kind}: left with an undecodable msg in {found}") from exc
        assert (msg.id, msg.queue) == (task_id, QUEUE), kind
        if found in ("retry", "archived"):
            assert msg.error_msg, (kind, found)
        quarantined = RAW_MSG_FIELD.encode() in fields
        if quarantined:
            assert found == "archived" and fields[RAW_MSG_FIELD.encode()] == raw
            assert "asynq TaskMessage" in msg.error_msg and task_id not in succeeded
            lines = [rec for rec in caplog.records if rec.levelno == logging.WARNING
                     and f"archived task {task_id} of queue {QUEUE}:" in rec.getMessage()]
            assert len(lines) == 1, (kind, [rec.getMessage()[:200] for rec in lines])
        elif _surely_malformed(kind, data):
            raise AssertionError(f"{kind} {data!r:.200}: not archived as malformed but {found}")

    # Nothing lost: every task written is in exactly one place, and the counters agree.
    placed = sum(len(ids) for ids in where.values())
    assert orphans + deleted + placed == len(items)
    processed, failed = (int(r.get(k) or 0) for k in (keys.processed_total(QUEUE), keys.failed_total(QUEUE)))
    assert failed == len(where["retry"]) + len(where["archived"])
    assert processed - failed == deleted + len(where["completed"])
    r.close()
