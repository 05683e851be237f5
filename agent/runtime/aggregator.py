"""Aggregator: asynq's group aggregation, run by the agent for the queues configured for it.

Tasks enqueued with a group (``asynq.Group(...)`` in Go, ``group=`` in our clients, or over
HTTP) wait in ``asynq:{q}:g:<group>`` in state ``aggregating``. Every second (asynq: every
``min(7 s, grace period)``) the aggregator looks at each group of its queues and, by asynq's
rules (spec/asynq-wire.md §3.11), stages a due group in an aggregation set
``g:<group>:<uuid>`` registered in ``aggregation_sets`` with a deadline: when the group holds
``max_size`` tasks (the oldest max_size are taken), when its oldest task is ``max_delay`` old,
or when its newest is ``grace_period`` old. The set becomes one task: a JSON list of the
payloads (``json_list``), or what the code's ``@aggregate`` function returns (``child``, run
in one of the queue's children). That task is enqueued as a normal pending task of the same
queue (with the max retry, timeout and retention of the group's oldest task), and the set and
its tasks deleted, in one script, and only while the set is still registered.

Nothing grouped is lost when an agent dies mid-aggregation: its set stays registered, and
once the set's deadline has passed any agent (or Go server) aggregating the queue puts its
tasks back into their group, where they are aggregated again. Our sets' deadlines are
``SET_LEASE`` seconds ahead and renewed while the aggregation runs (asynq: 2 minutes, not
renewed); a set reclaimed meanwhile is not enqueued by its late aggregator (the enqueue checks
it), so no group is aggregated twice by agents.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from agent.broker import keys
from agent.broker.messages import MessageDecodeError, decode_task_message, encode
from agent.broker.options import EnqueueOptions, build_message
from agent.broker.scripts import source
from agent.config.aggregation import Aggregation
from agent.runtime.loop import PeriodicLoop
from agent.supervisor.task_request import TaskRequest

log = logging.getLogger("agent.runtime.aggregator")

SET_LEASE = 20  # seconds an aggregation set is ours without a renewal
SET_RENEW = 5.0  # renewed this often while the aggregation function runs
SETS_PER_GROUP = 100  # aggregation sets made from one group in one tick at most
REQUEST_TYPE = "rundown:aggregate"  # the task_sdk request type of an @aggregate call
_SCRIPTS = ("aggregation_check", "aggregation_read", "aggregation_commit", "aggregation_reclaim")


class AggregationFailed(Exception):
    """The aggregation function failed; the set stays and is aggregated again later."""


class Aggregator(PeriodicLoop):
    name = "aggregator"
    tick_timeout = 120.0  # a child's @aggregate may take a while; sets are renewed meanwhile

    def __init__(self, redis: Any, rules: Mapping[str, Aggregation],
                 pool_for: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.redis = redis
        self.rules = dict(rules)
        self.pool_for = pool_for or (lambda queue: None)
        self.interval = min(1.0, *(r.grace_period for r in self.rules.values()))
        self.scripts = {name: redis.register_script(source(name)) for name in _SCRIPTS}
        # by queue: groups aggregated (aggregated tasks enqueued), the grouped tasks they were
        # made from, stale sets put back into their group, aggregations that failed
        self.groups: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self.reclaims: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    @property
    def sets_done(self) -> int:
        return sum(self.groups.values())

    @property
    def tasks_done(self) -> int:
        return sum(self.tasks.values())

    @property
    def reclaimed(self) -> int:
        return sum(self.reclaims.values())

    def status(self) -> dict[str, dict[str, Any]]:
        """By queue: its rules and counters (/status and metrics)."""
        return {queue: {"grace_period": rule.grace_period, "max_delay": rule.max_delay,
                        "max_size": rule.max_size, "aggregate": rule.aggregate,
                        "groups_aggregated": self.groups[queue],
                        "tasks_aggregated": self.tasks[queue],
                        "sets_reclaimed": self.reclaims[queue],
                        "failures": self.failures[queue]}
                for queue, rule in sorted(self.rules.items())}

    async def tick(self) -> None:
        for queue, rule in self.rules.items():
            await self.aggregate_queue(queue, rule)

    async def aggregate_queue(self, queue: str, rule: Aggregation) -> None:
        now = int(time.time())
        self.reclaims[queue] += int(await self.scripts["aggregation_reclaim"](
            keys=[keys.aggregation_sets(queue), keys.groups(queue)],
            args=[now, keys.group_prefix(queue)]))
        for raw in sorted(await self.redis.smembers(keys.groups(queue))):
            group = raw.decode() if isinstance(raw, bytes) else str(raw)
            for _ in range(SETS_PER_GROUP):
                set_key = await self._stage(queue, group, rule)
                if set_key is None:
                    break
                try:
                    await self._aggregate_set(queue, group, set_key, rule)
                except AggregationFailed as exc:
                    self.failures[queue] += 1
                    log.error("queue %s: group %r could not be aggregated (it is tried again once "
                              "its aggregation set expires, in %ds): %s", queue, group, SET_LEASE, exc)
                    break

    async def _stage(self, queue: str, group: str, rule: Aggregation) -> str | None:
        """asynq's aggregation check; the set's key when the group was due."""
        now = int(time.time())
        set_key = f"{keys.group(queue, group)}:{uuid.uuid4()}"
        made = await self.scripts["aggregation_check"](
            keys=[keys.group(queue, group), set_key, keys.aggregation_sets(queue), keys.groups(queue)],
            args=[rule.max_size, int(rule.max_delay), int(rule.grace_period), now + SET_LEASE, now, group])
        return set_key if made == 1 else None

    async def _aggregate_set(self, queue: str, group: str, set_key: str, rule: Aggregation) -> None:
        found = await self.scripts["aggregation_read"](
            keys=[set_key, keys.aggregation_sets(queue)], args=[keys.task_prefix(queue)])
        if not found or found[0] is None:
            return  # reclaimed already (another agent saw it expire)
        messages = []
        for data in found[1:]:
            if data is None:
                continue  # the task was deleted meanwhile
            try:
                messages.append(decode_task_message(data))
            except MessageDecodeError as exc:
                log.warning("queue %s: group %r: a grouped task's message is left out: %s",
                            queue, group, exc)
        if not messages:
            await self._discard(queue, set_key)
            return
        renewer = asyncio.create_task(self._renew(queue, set_key))
        try:
            task_type, payload = await self._combine(queue, group, messages, rule)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        first = messages[0]  # the aggregated task takes retries, timeout and retention from it
        msg = build_message(task_type, payload, EnqueueOptions(
            queue=queue, max_retry=first.retry, timeout=first.timeout or None,
            retention=first.retention or None))
        written = await self.scripts["aggregation_commit"](
            keys=[set_key, keys.aggregation_sets(queue), keys.task_key(queue, msg.id),
                  keys.pending(queue)],
            args=[keys.task_prefix(queue), encode(msg), msg.id, time.time_ns()])
        if written == 1:
            self.groups[queue] += 1
            self.tasks[queue] += len(messages)
            log.debug("queue %s: group %r: %d tasks aggregated into task %s (%s)", queue, group,
                      len(messages), msg.id, task_type)
        else:
            log.warning("queue %s: group %r: its aggregation set expired before the aggregated "
                        "task was enqueued; it is aggregated again", queue, group)

    async def _combine(self, queue: str, group: str, messages: list, rule: Aggregation
                       ) -> tuple[str, bytes]:
        """The aggregated task's type and payload."""
        first_type = messages[0].type
        payloads = [_payload_value(m.payload) for m in messages]
        if rule.aggregate == "json_list":
            return (rule.task_type or f"{first_type}:aggregated",
                    json.dumps(payloads, separators=(",", ":")).encode())
        pool = self.pool_for(queue)
        if pool is None:
            raise AggregationFailed(f"no child processes serve queue {queue!r} (aggregate: child)")
        request = TaskRequest(
            task_id=f"aggregate:{uuid.uuid4()}", type=REQUEST_TYPE, queue=queue,
            payload=json.dumps({"group": group, "type": first_type, "payloads": payloads}).encode(),
            timeout=float(SET_LEASE * 3))
        try:
            outcome = await pool.run(request)
        except Exception as exc:  # noqa: BLE001 - PoolUnavailable and the like: try again later
            raise AggregationFailed(f"{type(exc).__name__}: {exc}") from None
        if outcome.kind != "success" or outcome.result is None:
            raise AggregationFailed(f"the @aggregate function failed: {outcome.error}")
        try:
            answer = json.loads(outcome.result)
            task_type, value = answer["type"], answer["payload"]
        except (ValueError, KeyError, TypeError):
            raise AggregationFailed("the child's answer is not {type, payload}: "
                                    f"{outcome.result[:200]!r}") from None
        if not isinstance(task_type, str) or not task_type.strip():
            raise AggregationFailed(f"the aggregated task's type is not a task type: {task_type!r}")
        return task_type, json.dumps(value, separators=(",", ":")).encode()

    async def _renew(self, queue: str, set_key: str) -> None:
        while True:
            await asyncio.sleep(SET_RENEW)
            await self.redis.zadd(keys.aggregation_sets(queue),
                                  {set_key: int(time.time()) + SET_LEASE}, xx=True)

    async def _discard(self, queue: str, set_key: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(set_key)
            pipe.zrem(keys.aggregation_sets(queue), set_key)
            await pipe.execute()


def _payload_value(payload: bytes) -> Any:
    """A payload as a JSON value; one that is not JSON as its text, or as base64 when it is
    not UTF-8 either."""
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode()


def aggregation_rules(queues, served: Mapping[str, Aggregation], configured) -> dict[str, Aggregation]:
    """The aggregation of each consumed queue: the control server's (queues file), else the
    agent config's for that queue, else for its parent (``worker.queues`` names a parent in
    server mode, the tasks are in its sub-queues)."""
    from agent.runtime.agent import parent_queue

    mine = {q.name: q.aggregation for q in configured if q.aggregation is not None}
    out = {}
    for queue in queues:
        rule = served.get(queue) or mine.get(queue) or mine.get(parent_queue(queue))
        if rule is not None:
            out[queue] = rule
    return out


def add_aggregator(agent: Any, config: Any, pools: Mapping[str, Any],
                   served: Mapping[str, Aggregation] | None = None) -> Aggregator | None:
    """The aggregator of the consumed queues with an aggregation (``served``: the control
    server's, by queue), among the agent's background loops."""
    from agent.runtime.agent import parent_queue

    rules = aggregation_rules(agent.settings.weights, served or {}, config.worker.queues)
    if not rules:
        return None
    aggregator = Aggregator(agent.redis, rules, lambda queue: pools.get(parent_queue(queue)))
    agent.loops.append(aggregator)
    agent.aggregator = aggregator
    return aggregator
