"""Progress reports from a child (``{"status":"progress","id":...}``, docs/protocol.md).

A report counts only for a task whose handler runs in that child now; anything else (a task
it already answered, one it never got, a malformed fraction) is dropped at DEBUG level, so
a child can neither invent progress for another task nor flood the log.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.supervisor.launch import ChildSpec
    from agent.supervisor.slots import SlotLedger

log = logging.getLogger("agent.supervisor.child")

MAX_MESSAGE = 1000  #: characters of a progress message kept


def parse_progress(message: dict[str, Any]) -> tuple[str, float, str] | None:
    """(task id, fraction, text) of a progress message, or None when it is not one."""
    task_id = message.get("id")
    fraction = message.get("progress")
    text = message.get("message")
    if not isinstance(task_id, str) or not task_id:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        return None
    value = float(fraction)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    if text is None:
        text = ""
    elif not isinstance(text, str):
        return None
    return task_id, value, text[:MAX_MESSAGE]


def child_progress(spec: ChildSpec, ledger: SlotLedger, pid: int | None, message: dict[str, Any]) -> None:
    """Hand a child's progress report for a task it holds to ``spec.on_progress``."""
    parsed = parse_progress(message)
    if parsed is None:
        log.debug("queue %s: child process %s sent a malformed progress report; ignored", spec.queue, pid)
        return
    task_id, fraction, text = parsed
    if task_id not in ledger.outcomes:  # answered, withdrawn or never sent
        log.debug("queue %s: child process %s reported progress for task %s, which it does not "
                  "run now; ignored", spec.queue, pid, task_id)
        return
    running = ledger.running.get(task_id)
    # A task the agent still counts as waiting has started in the child: its report says so.
    request = running[1] if running is not None else next(
        (r for r in ledger.waiting if r.task_id == task_id), None)
    if spec.on_progress is not None and request is not None:
        spec.on_progress(task_id, request.queue, fraction, text)
