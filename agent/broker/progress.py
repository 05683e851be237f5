"""Where a task's progress lives in Redis: a field of its asynq task hash.

``rundown_progress`` holds ``{"progress": 0.4, "message": "...", "updated_at": <unix s>}``
as JSON. asynq (Go) reads task hashes only by named fields (``HMGET msg state ...``,
spec/asynq-wire.md §2.1), so it never sees it; its scripts leave unknown fields alone, and a
hash that asynq deletes takes the field with it.
"""

from __future__ import annotations

from typing import Any

import orjson

PROGRESS_FIELD = "rundown_progress"

#: Writes the progress of a task that is active, or completed (kept with retention: its last
#: report may arrive with its answer); never recreates a deleted hash, never marks a task
#: that is pending, scheduled, retried or archived. KEYS[1] task hash; ARGV[1] field, ARGV[2] JSON.
WRITE_PROGRESS_LUA = """
local state = redis.call("HGET", KEYS[1], "state")
if state == "active" or state == "completed" then
    redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
    return 1
end
return 0
"""


def encode_progress(fraction: float, message: str, updated_at: float) -> bytes:
    return orjson.dumps({"progress": fraction, "message": message, "updated_at": round(updated_at, 3)})


def decode_progress(raw: bytes | str | None) -> dict[str, Any] | None:
    """The stored progress, or None when absent or not ours (never raises)."""
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("progress"), (int, float)):
        return None
    return {"progress": value["progress"], "message": str(value.get("message") or ""),
            "updated_at": value.get("updated_at")}
