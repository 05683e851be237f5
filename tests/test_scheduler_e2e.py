"""Periodic tasks on a fleet of real agents, one SIGKILLed and restarted over and over: every
tick of every entry enqueued exactly once, within 1 s of its due time, and the entries listed
through asynq's scheduler keys.

The default run is a reduced form (3 agents x 30 entries for 40 s, a kill every 10 s); the
issue's form (3 agents x 100 entries for 3 minutes, a kill every 30 s) runs with ``-m slow``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis
import yaml

from agent.broker import keys
from agent.broker.messages import SchedulerEnqueueEvent
from agent.scheduler import parse_schedule
from agent.scheduler.store import list_entries, task_id
from tests.agentproc import AgentProcess, local_config


def _fleet_config(tmp_path, redis_url, n_entries: int, index: int):
    path, port = local_config(tmp_path / f"a{index}", redis_url, ["work"], processes=1)
    config = yaml.safe_load(path.read_text())
    config["schedule"] = [{"every": "1s", "type": f"tick:{i}", "queue": "ticks", "payload": {"i": i}}
                          for i in range(n_entries)]
    path.write_text(yaml.safe_dump(config))
    return path, port


def run_fleet(tmp_path, redis_url, r, *, agents: int, n_entries: int, seconds: float,
              kill_every: float) -> dict:
    for i in range(agents):
        (tmp_path / f"a{i}").mkdir()
    fleet = [AgentProcess(*_fleet_config(tmp_path, redis_url, n_entries, i), tmp_path / f"agent{i}.log")
             for i in range(agents)]
    for agent in fleet:
        agent.start(timeout=60)
    start = time.time()
    kills = 0
    try:
        next_kill = start + kill_every
        while time.time() < start + seconds:
            time.sleep(max(0.0, min(next_kill, start + seconds) - time.time()))
            if time.time() >= next_kill and time.time() < start + seconds:
                victim = fleet[kills % agents]
                victim.kill()  # SIGKILL: no drain, no clean-up
                kills += 1
                victim.start(timeout=60)
                next_kill += kill_every
        end = time.time()
        listed = asyncio.run(_listed(redis_url))
    finally:
        for agent in fleet:
            agent.stop()
    problems: list[str] = []
    schedule = parse_schedule(yaml.safe_load(fleet[0].config.read_text())["schedule"], "schedule",
                              lambda p, m: problems.append(m))
    assert not problems
    ids = [i.decode() for i in r.lrange(keys.pending("ticks"), 0, -1)]
    in_list = Counter(ids)
    lateness: list[float] = []
    missing: list[str] = []
    doubled = [i for i, n in in_list.items() if n > 1]
    history_doubles = 0
    window = range(int(start) + 1, int(end))
    pipe = r.pipeline(transaction=False)
    wanted = [(e, t) for e in schedule for t in window]
    for e, t in wanted:
        pipe.hget(keys.task_key("ticks", task_id(e, t)), "pending_since")
    for (e, t), since in zip(wanted, pipe.execute(), strict=True):
        if since is None or in_list[task_id(e, t)] != 1:
            missing.append(task_id(e, t))
        else:
            lateness.append(int(since) / 1e9 - t)
    for e in schedule:
        events = Counter(SchedulerEnqueueEvent.FromString(m).task_id
                         for m in r.zrange(f"asynq:scheduler_history:{e.id}", 0, -1))
        history_doubles += sum(n - 1 for n in events.values())
    lateness.sort()
    return {
        "agents": agents, "entries": n_entries, "seconds": round(end - start, 1), "kills": kills,
        "ticks_checked": len(wanted), "missing": missing[:10], "n_missing": len(missing),
        "doubled": doubled[:10], "history_doubles": history_doubles,
        "late_max": round(lateness[-1], 3) if lateness else None,
        "late_p99": round(lateness[int(len(lateness) * 0.99)], 3) if lateness else None,
        "early": sum(1 for x in lateness if x < 0),
        "listed": len(listed), "listed_distinct": len({e.id for e in listed}),
        "schedule_ids": {e.id for e in schedule}, "listed_ids": {e.id for e in listed},
    }


async def _listed(url):
    client = aioredis.from_url(url)
    try:
        return await list_entries(client)
    finally:
        await client.aclose()


def _check(result: dict) -> None:
    shown = {k: v for k, v in result.items() if not k.endswith("_ids")}
    print("scheduler fleet:", json.dumps(shown))
    assert result["n_missing"] == 0, shown
    assert not result["doubled"] and result["history_doubles"] == 0, shown
    assert result["early"] == 0 and result["late_max"] < 1.0, shown
    assert result["listed_ids"] == result["schedule_ids"] and result["listed"] == result["entries"], shown


def test_fleet_enqueues_every_tick_once_while_agents_die(tmp_path, redis_url, r):
    _check(run_fleet(tmp_path, redis_url, r, agents=3, n_entries=30, seconds=40, kill_every=10))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fleet_3_agents_100_entries_3_minutes(tmp_path, redis_url, r):
    _check(run_fleet(tmp_path, redis_url, r, agents=3, n_entries=100, seconds=180, kill_every=30))
