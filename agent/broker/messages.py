"""asynq's protobuf messages (``internal/proto/asynq.proto``), built at import time.

The descriptors are declared here in Python (same field numbers and types as asynq's
.proto) and live in a private descriptor pool, so no ``protoc`` step is needed and no
other package that registers ``asynq.*`` names can clash with us. python-protobuf keeps
unknown fields on parse and writes them back on serialise, so a message rewritten by
us keeps fields a newer asynq may add.
"""

from __future__ import annotations

import re

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, type_name)
_STRING, _BYTES, _INT32, _INT64, _BOOL, _MSG = (
    _F.TYPE_STRING,
    _F.TYPE_BYTES,
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_BOOL,
    _F.TYPE_MESSAGE,
)
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TS = ".google.protobuf.Timestamp"

_MESSAGES: dict[str, list[tuple]] = {
    "TaskMessage": [
        ("type", 1, _STRING, _OPT, None),
        ("payload", 2, _BYTES, _OPT, None),
        ("id", 3, _STRING, _OPT, None),
        ("queue", 4, _STRING, _OPT, None),
        ("retry", 5, _INT32, _OPT, None),
        ("retried", 6, _INT32, _OPT, None),
        ("error_msg", 7, _STRING, _OPT, None),
        ("last_failed_at", 11, _INT64, _OPT, None),
        ("timeout", 8, _INT64, _OPT, None),
        ("deadline", 9, _INT64, _OPT, None),
        ("unique_key", 10, _STRING, _OPT, None),
        ("group_key", 14, _STRING, _OPT, None),
        ("retention", 12, _INT64, _OPT, None),
        ("completed_at", 13, _INT64, _OPT, None),
        ("headers", 15, _MSG, _REP, ".asynq.TaskMessage.HeadersEntry"),
    ],
    "ServerInfo": [
        ("host", 1, _STRING, _OPT, None),
        ("pid", 2, _INT32, _OPT, None),
        ("server_id", 3, _STRING, _OPT, None),
        ("concurrency", 4, _INT32, _OPT, None),
        ("queues", 5, _MSG, _REP, ".asynq.ServerInfo.QueuesEntry"),
        ("strict_priority", 6, _BOOL, _OPT, None),
        ("status", 7, _STRING, _OPT, None),
        ("start_time", 8, _MSG, _OPT, _TS),
        ("active_worker_count", 9, _INT32, _OPT, None),
    ],
    "WorkerInfo": [
        ("host", 1, _STRING, _OPT, None),
        ("pid", 2, _INT32, _OPT, None),
        ("server_id", 3, _STRING, _OPT, None),
        ("task_id", 4, _STRING, _OPT, None),
        ("task_type", 5, _STRING, _OPT, None),
        ("task_payload", 6, _BYTES, _OPT, None),
        ("queue", 7, _STRING, _OPT, None),
        ("start_time", 8, _MSG, _OPT, _TS),
        ("deadline", 9, _MSG, _OPT, _TS),
    ],
    "SchedulerEntry": [
        ("id", 1, _STRING, _OPT, None),
        ("spec", 2, _STRING, _OPT, None),
        ("task_type", 3, _STRING, _OPT, None),
        ("task_payload", 4, _BYTES, _OPT, None),
        ("enqueue_options", 5, _STRING, _REP, None),
        ("next_enqueue_time", 6, _MSG, _OPT, _TS),
        ("prev_enqueue_time", 7, _MSG, _OPT, _TS),
    ],
    "SchedulerEnqueueEvent": [
        ("task_id", 1, _STRING, _OPT, None),
        ("enqueue_time", 2, _MSG, _OPT, _TS),
    ],
}

# map fields: message name -> (entry name, value type)
_MAP_ENTRIES = {
    "TaskMessage": ("HeadersEntry", _STRING),
    "ServerInfo": ("QueuesEntry", _INT32),
}


def _add_field(msg: descriptor_pb2.DescriptorProto, name, number, ftype, label, type_name) -> None:
    field = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        field.type_name = type_name


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="rundown/asynq.proto", package="asynq", syntax="proto3"
    )
    file.dependency.append("google/protobuf/timestamp.proto")
    for msg_name, fields in _MESSAGES.items():
        msg = file.message_type.add(name=msg_name)
        for spec in fields:
            _add_field(msg, *spec)
        if msg_name in _MAP_ENTRIES:
            entry_name, value_type = _MAP_ENTRIES[msg_name]
            entry = msg.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            _add_field(entry, "key", 1, _STRING, _OPT, None)
            _add_field(entry, "value", 2, value_type, _OPT, None)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
_POOL.Add(_build_file())


def _message_class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"asynq.{name}"))


TaskMessage = _message_class("TaskMessage")
ServerInfo = _message_class("ServerInfo")
WorkerInfo = _message_class("WorkerInfo")
SchedulerEntry = _message_class("SchedulerEntry")
SchedulerEnqueueEvent = _message_class("SchedulerEnqueueEvent")


_SURROGATE = re.compile("[\ud800-\udfff]")


class MessageDecodeError(ValueError):
    """A ``msg`` field that is not a valid asynq TaskMessage."""


def decode_task_message(data: bytes):
    """Parse a TaskMessage; raise MessageDecodeError (with the reason) when invalid."""
    message = TaskMessage()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as exc:  # invalid wire data or invalid UTF-8
        raise MessageDecodeError(f"undecodable asynq TaskMessage ({len(data)} bytes): {exc}") from exc
    return message


def encode(message) -> bytes:
    return message.SerializeToString(deterministic=True)


def utf8_safe(text: str | bytes) -> str:
    """Return text that encodes as valid UTF-8 (Go's protobuf rejects anything else).

    Invalid byte sequences and lone surrogates become U+FFFD.
    """
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
