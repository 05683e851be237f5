"""The scheduler's Redis writes: one tick's task (claimed once for the fleet), the asynq
enqueue history, and the entries published where asynq's tools list them (wire spec §1.1).

A tick is claimed and enqueued by one script in the queue's hash slot: the claim key
``rundown:{<queue>}:sched:<entry id>:<tick>`` carries the queue's hash tag, so the claim and the
task's keys are on one Cluster node and the script is atomic. Whichever agent runs it first
writes the task; every other agent finds the claim and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.broker import keys
from agent.broker.messages import SchedulerEnqueueEvent, SchedulerEntry, encode
from agent.broker.options import EnqueueOptions, build_message
from agent.scheduler.entries import ScheduleEntry

SCHEDULERS = "asynq:schedulers"
HISTORY_CAP = 1000  #: asynq keeps the 1,000 newest enqueue events of an entry
PUBLISH_TTL = 20  #: seconds; asynq: twice its 10 s scheduler heartbeat
GO_ZERO_TIME = -62135596800  #: Go's zero time.Time: "never" for prev_enqueue_time

_CLAIM_AND_ENQUEUE = """
-- KEYS[1] claim key, KEYS[2] task hash, KEYS[3] pending list
-- ARGV[1] msg, ARGV[2] task id, ARGV[3] now (unix ns), ARGV[4] claim TTL (s)
-- Returns 1 when this call enqueued the tick, 0 when it was claimed or exists already.
if not redis.call("SET", KEYS[1], ARGV[2], "NX", "EX", ARGV[4]) then
    return 0
end
if redis.call("EXISTS", KEYS[2]) == 1 then
    return 0
end
redis.call("HSET", KEYS[2], "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[3], ARGV[2])
return 1
"""

_PUBLISH = """
-- KEYS[1] asynq:schedulers:{<id>}; ARGV[1] SchedulerEntry, ARGV[2] TTL (s)
redis.call("DEL", KEYS[1])
redis.call("LPUSH", KEYS[1], ARGV[1])
redis.call("EXPIRE", KEYS[1], ARGV[2])
return 1
"""


def claim_key(entry: ScheduleEntry, tick: int) -> str:
    return f"rundown:{{{entry.queue}}}:sched:{entry.id}:{tick}"


def history_key(entry: ScheduleEntry) -> str:
    return f"asynq:scheduler_history:{entry.id}"


def scheduler_key(entry: ScheduleEntry) -> str:
    # one asynq "scheduler" per entry: agents with different schedules never list an entry twice
    return f"asynq:schedulers:{{rundown:{entry.id}}}"


def task_id(entry: ScheduleEntry, tick: int) -> str:
    """The task ID of an entry's tick: the same on every agent."""
    return f"{entry.id}:{tick}"


def _options(entry: ScheduleEntry, tick: int) -> EnqueueOptions:
    opts = EnqueueOptions(queue=entry.queue, task_id=task_id(entry, tick), timeout=entry.timeout,
                          retention=entry.retention)
    if entry.max_retry is not None:
        opts.max_retry = entry.max_retry
    return opts


def option_strings(entry: ScheduleEntry) -> list[str]:
    """The entry's options as asynq's ``Option.String()`` writes them (``asynq cron ls``)."""
    out = [f'Queue("{entry.queue}")']
    if entry.max_retry is not None:
        out.append(f"MaxRetry({entry.max_retry})")
    if entry.timeout:
        out.append(f"Timeout({_go_duration(entry.timeout)})")
    if entry.retention:
        out.append(f"Retention({_go_duration(entry.retention)})")
    return out


def _go_duration(seconds: float) -> str:
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s")


@dataclass(frozen=True)
class TickResult:
    entry: ScheduleEntry
    tick: int
    enqueued: bool  #: by this call; False when another agent had it


class SchedulerStore:
    """Redis access for :class:`agent.scheduler.loop.Scheduler` (redis.asyncio client)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_CLAIM_AND_ENQUEUE)
        self._publish = redis.register_script(_PUBLISH)

    async def register_queues(self, entries: list[ScheduleEntry]) -> None:
        queues = sorted({e.queue for e in entries})
        if queues:
            await self.redis.sadd(keys.ALL_QUEUES, *queues)

    async def enqueue_ticks(self, due: list[tuple[ScheduleEntry, int]], now: float | None = None) -> list[TickResult]:
        """Claim and enqueue each (entry, tick) in one round trip; record the ones this call
        enqueued in their entry's asynq history (a second round trip)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for entry, tick in due:
            msg = build_message(entry.type, entry.payload_bytes(), _options(entry, tick))
            ttl = min(2 * entry.interval_hint(now) + 60, 400 * 86400)
            await self._enqueue(
                keys=[claim_key(entry, tick), keys.task_key(entry.queue, msg.id), keys.pending(entry.queue)],
                args=[encode(msg), msg.id, time.time_ns(), ttl], client=pipe)
        codes = await pipe.execute()
        results = [TickResult(e, t, int(c) == 1) for (e, t), c in zip(due, codes, strict=True)]
        written = [r for r in results if r.enqueued]
        if written:
            pipe = self.redis.pipeline(transaction=False)
            stamp = int(now)
            for r in written:
                event = SchedulerEnqueueEvent(task_id=task_id(r.entry, r.tick))
                event.enqueue_time.seconds = stamp
                pipe.zadd(history_key(r.entry), {encode(event): stamp})
                pipe.zremrangebyrank(history_key(r.entry), 0, -HISTORY_CAP - 1)
            await pipe.execute()
        return results

    async def claimed(self, pairs: list[tuple[ScheduleEntry, int]]) -> list[bool]:
        """Whether each tick was claimed (enqueued) by some agent."""
        pipe = self.redis.pipeline(transaction=False)
        for entry, tick in pairs:
            pipe.exists(claim_key(entry, tick))
        return [bool(n) for n in await pipe.execute()]

    async def last_enqueued(self, entries: list[ScheduleEntry]) -> list[int | None]:
        """The enqueue time of each entry's newest history event; None if it never ran."""
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            pipe.zrevrange(history_key(entry), 0, 0, withscores=True)
        return [int(rows[0][1]) if rows else None for rows in await pipe.execute()]

    async def publish(self, entries: list[tuple[ScheduleEntry, int, int | None]], now: float | None = None) -> None:
        """Write each (entry, next tick, previous enqueue) as an asynq SchedulerEntry that
        ``asynq cron ls`` and ``Inspector.SchedulerEntries()`` list."""
        now = int(time.time() if now is None else now)
        pipe = self.redis.pipeline(transaction=False)
        for entry, next_tick, prev in entries:
            msg = SchedulerEntry(id=entry.id, spec=entry.spec, task_type=entry.type,
                                 task_payload=entry.payload_bytes(),
                                 enqueue_options=option_strings(entry))
            msg.next_enqueue_time.seconds = next_tick
            msg.prev_enqueue_time.seconds = prev if prev is not None else GO_ZERO_TIME
            await self._publish(keys=[scheduler_key(entry)], args=[encode(msg), PUBLISH_TTL], client=pipe)
            pipe.zadd(SCHEDULERS, {scheduler_key(entry): now + PUBLISH_TTL})
        await pipe.execute()


async def list_entries(redis: Any, now: float | None = None) -> list[Any]:
    """Every live SchedulerEntry, as ``Inspector.SchedulerEntries()`` reads them: the members
    of ``asynq:schedulers`` not yet expired, then each one's list."""
    now = int(time.time() if now is None else now)
    names = await redis.zrangebyscore(SCHEDULERS, now, "+inf")
    out = []
    for name in names:
        for raw in await redis.lrange(name, 0, -1):
            entry = SchedulerEntry()
            entry.ParseFromString(raw)
            out.append(entry)
    return out
