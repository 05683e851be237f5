"""Task search over asynq keys, served by the server, paginated by a cursor.

A search walks the containers of the chosen queues and states in a fixed order (for each
queue: active, pending, scheduled, retry, archived, completed; retry and archived first when
it looks for an error text), a chunk of entries per Lua call (``lua/scan.lua``), which filters
by ID prefix, type and error text inside Redis, so only candidate messages travel and are
decoded. A page ends when it holds ``size`` tasks or when the request has spent its budget (1 s
of scanning, or ``budget`` entries): then it says how far it got, and its cursor continues
from there. So the first page of a million tasks costs one chunk when the filters match
often, and a bounded time when they match rarely.

A cursor is ``<queue index>.<state index>.<position>``; list positions shift while a queue
moves (a new task pushed at the head), so a page of a busy pending list may repeat or skip
an entry, as any offset pagination would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from agent.broker import keys
from agent.inspect.inspector import TaskDetails, task_from_fields

SEARCH_STATES = ("active", "pending", "scheduled", "retry", "archived", "completed")
ORDER = {"active": "list", "pending": "list", "scheduled": "asc", "retry": "asc",
         "archived": "desc", "completed": "desc"}
CHUNK = 2000  #: entries one Lua call examines (about 2-5 ms of Redis time)
DEFAULT_BUDGET = 2_000_000  #: entries one page may examine before it answers with what it has
TIME_BUDGET = 1.0  #: seconds of scanning one page may take before it answers with what it has
FAILED_FIRST = ("retry", "archived")  #: an error-text search looks where errors are first
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class SearchError(ValueError):
    """A search parameter is invalid; the message names it."""


@cache
def scan_source() -> str:
    return resources.files("agent.server.dashboard").joinpath("lua/scan.lua").read_text()


@dataclass(frozen=True)
class SearchQuery:
    queues: tuple[str, ...]
    states: tuple[str, ...] = SEARCH_STATES
    type: str = ""
    id_prefix: str = ""
    error: str = ""
    since: float | None = None  #: Unix seconds, inclusive
    until: float | None = None

    def filtered(self) -> bool:
        return bool(self.type or self.id_prefix or self.error or self.since is not None
                    or self.until is not None)


@dataclass
class SearchPage:
    tasks: list[TaskDetails] = field(default_factory=list)
    next_cursor: str | None = None  #: None: nothing left to examine
    examined: int = 0
    seconds: float = 0.0
    budget_spent: bool = False  #: the page ended because of the budget, not because it was full
    total: int | None = None  #: tasks in the searched containers (unfiltered searches)


def parse_time(name: str, text: str | None) -> float | None:
    """``YYYY-MM-DDTHH:MM[:SS]`` (UTC, as an HTML datetime-local input sends it), a date,
    or Unix seconds."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise SearchError(f"{name} must be a UTC time like 2026-12-06T09:30 or Unix seconds, "
                          f"got {text[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_cursor(text: str | None) -> tuple[int, int, int]:
    if not text:
        return 0, 0, 0
    try:
        qi, si, pos = (int(p) for p in text.split("."))
    except ValueError:
        raise SearchError(f"cursor must be three numbers like 0.1.2000, got {text[:40]!r}") from None
    if min(qi, si, pos) < 0:
        raise SearchError("cursor numbers must not be negative")
    return qi, si, pos


def container(queue: str, state: str) -> str:
    return keys.STATE_CONTAINER[state](queue)


def _matches(task: TaskDetails, query: SearchQuery) -> bool:
    """The exact filters on a decoded task (the Lua ones are substring tests)."""
    if query.type and task.type != query.type:
        return False
    if query.error and query.error.lower() not in task.last_error.lower():
        return False
    if task.state == "completed" and (query.since is not None or query.until is not None):
        done = task.completed_at
        return bool(done) and (query.since is None or done >= query.since) and (
            query.until is None or done <= query.until)
    return True


def task_time(task: TaskDetails) -> float | None:
    """The time a task is listed and range-filtered by: when it was enqueued (pending), is
    due (scheduled, retry), was archived, or completed; active tasks have none."""
    if task.state == "pending":
        return task.pending_since_ns / 1e9 if task.pending_since_ns else None
    if task.state in ("scheduled", "retry", "archived"):
        return float(task.score) if task.score is not None else None
    if task.state == "completed":
        return float(task.completed_at) if task.completed_at else None
    return None


def search_states(query: SearchQuery) -> list[str]:
    """The states a query walks, in order: failed ones first when it looks for an error
    text; no active tasks with a time range (they have no time)."""
    ranged = query.since is not None or query.until is not None
    states = [s for s in query.states if not (ranged and s == "active")]
    if query.error:
        states = [s for s in FAILED_FIRST if s in states] + [s for s in states if s not in FAILED_FIRST]
    return states


async def search(client: aioredis.Redis, query: SearchQuery, cursor: str | None = None, *,
                 size: int = PAGE_SIZE, budget: int = DEFAULT_BUDGET,
                 time_budget: float = TIME_BUDGET) -> SearchPage:
    """One page of the tasks that match ``query``, from ``cursor``: full, or cut short by the
    budget (``budget`` entries examined or ``time_budget`` seconds spent, whichever first)."""
    if not query.queues:
        return SearchPage()
    size = max(1, min(size, MAX_PAGE_SIZE))
    script = client.register_script(scan_source())
    qi, si, pos = parse_cursor(cursor)
    page = SearchPage()
    started = time.perf_counter()
    ranged = query.since is not None or query.until is not None
    states = search_states(query)
    now = time.time()
    calls = 0  #: a page always examines one chunk at least, so every page moves on
    while qi < len(query.queues):
        if si >= len(states):
            qi, si, pos = qi + 1, 0, 0
            continue
        queue, state = query.queues[qi], states[si]
        if calls and (page.examined >= budget or time.perf_counter() - started >= time_budget):
            page.budget_spent = True
            page.next_cursor = f"{qi}.{si}.{pos}"
            break
        lua_range = ranged and state != "completed"
        reply = await script(keys=[container(queue, state)], args=[
            ORDER[state], pos, CHUNK, keys.task_prefix(queue), query.id_prefix,
            query.type, query.error.lower(),
            "" if not lua_range or query.since is None else int(query.since),
            "" if not lua_range or query.until is None else int(query.until),
            size - len(page.tasks)])
        calls += 1
        next_pos = int(reply[0])
        page.examined += int(reply[1])
        for i in range(2, len(reply), 3):
            task_id, msg, when = reply[i:i + 3]
            task = task_from_fields(
                queue, task_id.decode(errors="replace"), state, msg,
                score=when if state != "pending" and when else None,
                pending_since=int(when) * 1_000_000_000 if state == "pending" and when else None,
                now=now)
            if _matches(task, query):
                page.tasks.append(task)
        if next_pos < 0:
            si, pos = si + 1, 0
        else:
            pos = next_pos
        if len(page.tasks) >= size:
            page.next_cursor = _resume(qi, si, pos, len(query.queues), len(states))
            break
    page.seconds = time.perf_counter() - started
    if not query.filtered():
        page.total = await count_tasks(client, query.queues, states)
    return page


def _resume(qi: int, si: int, pos: int, queues: int, states: int) -> str | None:
    if si >= states:
        qi, si, pos = qi + 1, 0, 0
    return None if qi >= queues else f"{qi}.{si}.{pos}"


async def count_tasks(client: aioredis.Redis, queues: Sequence[str], states: Sequence[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for state in states:
                if ORDER[state] == "list":
                    pipe.llen(container(queue, state))
                else:
                    pipe.zcard(container(queue, state))
        counts: list[Any] = await pipe.execute()
    return sum(int(c) for c in counts)
