"""The flow limits a queue's agents enforce, written to Redis beside the queue so that
``rundown-agent inspect stats`` (on any machine) shows them with their live state."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from agent.broker import keys
from agent.broker.flow.control import flow_prefix, rate_key
from agent.config.flow import FlowLimits, parse_rate

#: How long the published limits stay without an agent writing them again (each start does).
PUBLISHED_TTL = 7 * 86400


def limits_key(queue: str) -> str:
    return f"{flow_prefix(queue)}limits"


async def publish_limits(client, limits: Mapping[str, FlowLimits]) -> None:
    """Write each limited queue's limits (JSON, the config's spelling)."""
    items = [(q, lim) for q, lim in limits.items() if lim]
    if not items:
        return
    async with client.pipeline(transaction=False) as pipe:
        for queue, lim in items:
            pipe.set(limits_key(queue), json.dumps(lim.as_dict()), ex=PUBLISHED_TTL)
        await pipe.execute()


def read_flow(client, queues: Sequence[str]) -> dict[str, dict]:
    """For each queue with published limits (sync client): the limits, the rate's tokens now,
    and the running count (the queue's leases). One pipelined round trip."""
    if not queues:
        return {}
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.get(limits_key(queue))
        pipe.get(rate_key(queue))
        pipe.zcard(keys.lease(queue))
    pipe.time()
    replies = pipe.execute()
    seconds, micros = replies[-1]
    now_us = int(seconds) * 1_000_000 + int(micros)
    out: dict[str, dict] = {}
    for i, queue in enumerate(queues):
        raw, tat, running = replies[3 * i: 3 * i + 3]
        if raw is None:
            continue
        try:
            limits = json.loads(raw)
        except ValueError:
            continue
        entry = {**limits, "running": int(running), "tokens": None}
        if "rate" in limits:
            try:
                rate = parse_rate(limits["rate"])
            except ValueError:
                rate = None
            if rate is not None:
                entry["tokens"] = tokens_now(rate.interval_us, rate.burst, int(tat or 0), now_us)
        out[queue] = entry
    return out


def tokens_now(interval_us: int, burst: int, tat_us: int, now_us: int) -> int:
    """The GCRA state's tokens at ``now_us`` (as dequeue_flow.lua counts them)."""
    tat = max(tat_us, now_us)
    n = (now_us + (burst - 1) * interval_us - tat) // interval_us + 1
    return max(0, min(burst, n))
