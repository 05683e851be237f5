"""Task messages the agent cannot trust: what is wrong with them, and what is archived instead.

A task hash whose ``msg`` is not a TaskMessage, or names another task ID or queue than its
key, is never run: it is archived with the reason in ``error_msg``. asynq's tooling reads an
archived task only through a decodable ``msg`` (an undecodable one is skipped by the
Inspector's lists and fails ``GetTaskInfo``), so the archive writes a valid stand-in message
under the task's own ID and queue and keeps the original bytes in ``RAW_MSG_FIELD``.
"""

from __future__ import annotations

from agent.broker.messages import MessageDecodeError, TaskMessage, decode_task_message

#: Task hash field holding the original ``msg`` bytes of a task archived as malformed. Go
#: reads task hashes only by named fields (HMGET msg/state/result/...), so it never sees it.
RAW_MSG_FIELD = "rundown_raw_msg"

#: How much of a foreign ID or queue name a reason quotes.
_QUOTE_LIMIT = 80


def _quote(text: str) -> str:
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"


def check_message(raw: bytes, task_id: str, queue: str) -> tuple[TaskMessage | None, str]:
    """The message of the task found as ``task_id`` in ``queue``, or None and the reason.

    A message that names another ID or queue counts as malformed: the outcome scripts address
    keys by the message's queue and ID, so trusting it would leave the task active forever
    (every write NOT FOUND, recovery too).
    """
    try:
        message = decode_task_message(raw)
    except MessageDecodeError as exc:
        return None, str(exc)
    if message.id != task_id or message.queue != queue:
        return None, (f"invalid asynq TaskMessage: it names task {_quote(message.id)} of queue "
                      f"{_quote(message.queue)} but was found as task {task_id!r} of queue {queue!r}")
    return message, ""


def stand_in_message(raw: bytes, task_id: str, queue: str) -> TaskMessage:
    """The message archived in place of a malformed one: the decodable original with the
    task's own ID and queue, or, when ``raw`` is not a TaskMessage at all, an empty one
    (type "", no payload) with that ID and queue."""
    try:
        message = decode_task_message(raw)
    except MessageDecodeError:
        return TaskMessage(id=task_id, queue=queue)
    message.id = task_id
    message.queue = queue
    return message
