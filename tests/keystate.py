"""Dump every asynq key of a Redis as plain Python values, to assert whole key states."""

from __future__ import annotations

import redis


def key_state(r: redis.Redis, pattern: str = "asynq:*") -> dict[str, object]:
    """Map key -> value: str for strings, list for lists, dict for hashes,
    {member: score} for zsets, set for sets. Bytes are decoded where they are text."""
    state: dict[str, object] = {}
    for raw_key in r.scan_iter(match=pattern, count=1000):
        key = raw_key.decode()
        kind = r.type(raw_key).decode()
        if kind == "string":
            state[key] = r.get(raw_key)
        elif kind == "list":
            state[key] = [v.decode() for v in r.lrange(raw_key, 0, -1)]
        elif kind == "hash":
            state[key] = {k.decode(): v for k, v in r.hgetall(raw_key).items()}
        elif kind == "zset":
            state[key] = {m.decode(): s for m, s in r.zrange(raw_key, 0, -1, withscores=True)}
        elif kind == "set":
            state[key] = {m.decode() for m in r.smembers(raw_key)}
    return state
