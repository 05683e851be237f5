"""Failures grouped by error: the retry and archived tasks of each queue, grouped by queue,
type and normalised error text (numbers, IDs, hex, quoted values and addresses replaced by
placeholders), with counts and first / last failure times.

Grouping reads the failed tasks' messages in chunks through ``lua/scan.lua`` and decodes
them here; at most ``limit`` failed tasks are read per call (the page says when it stopped
short), so a queue with millions of failures still answers in bounded time.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import redis.asyncio as aioredis

from agent.broker import keys
from agent.broker.messages import MessageDecodeError, decode_task_message
from agent.server.dashboard.search import CHUNK, scan_source

FAILED_STATES = ("retry", "archived")
DEFAULT_LIMIT = 500_000
MAX_SHOWN = 300  #: characters of a normalised error kept

_PATTERNS = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"'[^'\n]{0,200}'"), "'<str>'"),
    (re.compile(r'"[^"\n]{0,200}"'), '"<str>"'),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<addr>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b"),
     "<hex>"),
    (re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


@lru_cache(maxsize=65536)
def normalise_error(text: str) -> str:
    """The error text with its variable parts replaced, so the same failure groups together:
    ``timeout after 31.2s on 10.0.0.5:6379`` -> ``timeout after <n>s on <addr>``."""
    line = text.strip()
    for pattern, placeholder in _PATTERNS:
        line = pattern.sub(placeholder, line)
    return line[:MAX_SHOWN] or "(no error text)"


def group_id(queue: str, task_type: str, error: str) -> str:
    return hashlib.sha256(f"{queue}\0{task_type}\0{error}".encode()).hexdigest()[:16]


@dataclass
class FailureGroup:
    queue: str
    type: str
    error: str  #: normalised
    count: int = 0
    retry: int = 0  #: of which in retry (the rest archived)
    first_seen: int = 0  #: earliest last_failed_at, Unix seconds
    last_seen: int = 0
    example: str = ""  #: one raw error text of the group
    example_id: str = ""

    @property
    def id(self) -> str:
        return group_id(self.queue, self.type, self.error)


@dataclass
class FailureReport:
    groups: list[FailureGroup] = field(default_factory=list)
    read: int = 0  #: failed tasks read
    total: int = 0  #: failed tasks in the queues
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.read >= self.total


async def _scan_failed(client: aioredis.Redis, queue: str, state: str, limit: int):
    """(id, msg) of up to ``limit`` tasks of one failed container, in chunks."""
    script = client.register_script(scan_source())
    pos, seen = 0, 0
    while seen < limit:
        reply = await script(keys=[keys.STATE_CONTAINER[state](queue)], args=[
            "desc", pos, CHUNK, keys.task_prefix(queue), "", "", "", "", "", CHUNK])
        for i in range(2, len(reply), 3):
            yield reply[i].decode(errors="replace"), reply[i + 1]
        seen += int(reply[1])
        if int(reply[0]) < 0:
            return
        pos = int(reply[0])


async def failure_groups(client: aioredis.Redis, queues: Sequence[str], *,
                         limit: int = DEFAULT_LIMIT) -> FailureReport:
    started = time.perf_counter()
    report = FailureReport()
    async with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for state in FAILED_STATES:
                pipe.zcard(keys.STATE_CONTAINER[state](queue))
        report.total = sum(int(n) for n in await pipe.execute())
    groups: dict[tuple[str, str, str], FailureGroup] = {}
    for queue in queues:
        for state in FAILED_STATES:
            async for task_id, msg in _scan_failed(client, queue, state, limit - report.read):
                report.read += 1
                if not msg:
                    continue
                try:
                    message = decode_task_message(msg)
                except MessageDecodeError:
                    continue
                error = normalise_error(message.error_msg)
                key = (queue, message.type, error)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = FailureGroup(queue, message.type, error,
                                                       example=message.error_msg[:1000],
                                                       example_id=task_id)
                group.count += 1
                group.retry += state == "retry"
                at = int(message.last_failed_at)
                if at:
                    group.first_seen = min(group.first_seen or at, at)
                    group.last_seen = max(group.last_seen, at)
            if report.read >= limit:
                break
    report.groups = sorted(groups.values(), key=lambda g: (-g.count, g.queue, g.type, g.error))
    report.seconds = time.perf_counter() - started
    return report


async def group_members(client: aioredis.Redis, queue: str, task_type: str, error: str,
                        *, limit: int = DEFAULT_LIMIT) -> list[tuple[str, str]]:
    """(task id, state) of every failed task of the group (read now, not from a cache)."""
    members: list[tuple[str, str]] = []
    needle = task_type.encode()
    for state in FAILED_STATES:
        async for task_id, msg in _scan_failed(client, queue, state, limit):
            if not msg or needle not in msg:
                continue
            try:
                message = decode_task_message(msg)
            except MessageDecodeError:
                continue
            if message.type == task_type and normalise_error(message.error_msg) == error:
                members.append((task_id, state))
    return members
