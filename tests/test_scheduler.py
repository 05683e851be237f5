"""Periodic tasks: entries, tick arithmetic, and schedulers racing on a real Redis.

The end-to-end fleet test (real agents, one SIGKILLed and restarted) is
tests/test_scheduler_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from agent.broker import keys
from agent.broker.messages import SchedulerEnqueueEvent, decode_task_message
from agent.config import load_config
from agent.config.errors import ConfigError
from agent.scheduler import Scheduler, parse_schedule
from agent.scheduler.store import list_entries, task_id


def entries(raw):
    problems: list[str] = []
    out = parse_schedule(raw, "schedule", lambda p, m: problems.append(f"{p}: {m}"))
    assert not problems, problems
    return out


def test_entry_ids_are_the_same_on_every_agent_and_differ_by_content():
    a = entries([{"every": "1s", "type": "t", "payload": {"x": 1, "y": 2}}])[0]
    b = entries([{"every": "1s", "type": "t", "payload": {"y": 2, "x": 1}}])[0]
    c = entries([{"every": "1s", "type": "t", "payload": {"x": 2}}])[0]
    assert a.id == b.id != c.id
    assert entries([{"every": 5, "type": "t", "id": "nightly"}])[0].id == "nightly"


def test_every_ticks_are_anchored_to_the_epoch():
    e = entries([{"every": "30s", "type": "t"}])[0]
    assert e.next_tick(1000.2) == 1020 and e.next_tick(1020) == 1050
    assert e.prev_tick(1049.9) == 1020 and e.prev_tick(1050) == 1050
    assert e.spec == "@every 30s"


def test_cron_follows_its_timezone_across_a_dst_change():
    e = entries([{"cron": "0 2 * * *", "type": "t", "timezone": "Europe/Paris"}])[0]
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 28, 12, tzinfo=paris).timestamp()
    first = e.next_tick(start)
    # 02:00 does not exist on 29 March 2026 in Paris: croniter moves it to 03:00 CEST
    assert datetime.fromtimestamp(first, paris).hour in (2, 3)
    second = e.next_tick(first)
    assert datetime.fromtimestamp(second, paris).strftime("%d %H:%M") == "30 02:00"
    assert e.prev_tick(second) == second and e.prev_tick(second - 1) == first


def test_six_field_cron_has_seconds_first():
    e = entries([{"cron": "*/10 * * * * *", "type": "t"}])[0]
    assert e.next_tick(1000) == 1010 and e.next_tick(1001) == 1010


def test_bad_entries_name_the_entry_and_key(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("redis: {url: 'redis://127.0.0.1:1/0'}\n"
                    f"deployment: {{path: '{tmp_path}', startup_cmd: 'python w.py'}}\n"
                    "worker: {queues: [a]}\n"
                    "schedule:\n"
                    "  - {cron: '61 * * * *', type: report}\n"
                    "  - {every: 0.5s, type: report}\n"
                    "  - {every: 1m, cron: '* * * * *', type: report}\n"
                    "  - {every: 1m, type: report, queue: '', missed: later, timezone: Nowhere/City}\n"
                    "  - {every: 1m, type: report}\n"
                    "  - {every: 1m, type: report}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for expected in ("schedule[0].cron", "schedule[1].every", "schedule[2]: give cron or every",
                     "schedule[3].queue", "schedule[3].missed", "schedule[3].timezone",
                     "schedule[5]: the same entry as schedule[4]"):
        assert expected in text, text


def test_config_schedule_is_parsed(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("redis: {url: 'redis://127.0.0.1:1/0'}\n"
                    f"deployment: {{path: '{tmp_path}', startup_cmd: 'python w.py'}}\n"
                    "worker: {queues: [a]}\n"
                    "schedule:\n"
                    "  - {cron: '*/5 * * * *', type: report, payload: {k: v}, queue: low, timezone: UTC,"
                    " missed: run_once, max_retry: 3, timeout: 1m}\n")
    (entry,) = load_config(path).schedule
    assert (entry.type, entry.queue, entry.payload, entry.missed, entry.max_retry, entry.timeout) == (
        "report", "low", {"k": "v"}, "run_once", 3, 60.0)


async def _run_for(schedulers, seconds):
    for s in schedulers:
        s.start()
    await asyncio.sleep(seconds)
    for s in schedulers:
        await s.stop()


def _tick_tasks(r, queue):
    ids = [i.decode() for i in r.lrange(keys.pending(queue), 0, -1)]
    return ids


async def test_racing_schedulers_enqueue_each_tick_once(r, redis_url):
    """Five schedulers with the same 20 entries: every tick of every entry once, on time,
    one history event each; the entries are listed once through asynq:schedulers."""
    raw = [{"every": "1s", "type": f"tick{i}", "queue": "ticks", "payload": {"i": i}} for i in range(20)]
    es = entries(raw)
    clients = [aioredis.from_url(redis_url) for _ in range(5)]
    schedulers = [Scheduler(c, es) for c in clients]
    start = time.time()
    await _run_for(schedulers, 3.5)
    end = time.time()
    ids = _tick_tasks(r, "ticks")
    assert len(ids) == len(set(ids)), "a tick was enqueued twice"
    for entry in es:
        for tick in range(int(start) + 1, int(end)):
            tid = task_id(entry, tick)
            assert tid in ids, f"{entry.type}: tick {tick} missing"
            h = r.hgetall(keys.task_key("ticks", tid))
            late = int(h[b"pending_since"]) / 1e9 - tick
            assert 0 <= late < 1.0, (tid, late)
            msg = decode_task_message(h[b"msg"])
            assert (msg.type, msg.queue, msg.payload) == (entry.type, "ticks", entry.payload_bytes())
        events = [SchedulerEnqueueEvent.FromString(m).task_id
                  for m in r.zrange(f"asynq:scheduler_history:{entry.id}", 0, -1)]
        assert len(events) == len(set(events)) and set(events) == {
            i for i in ids if i.startswith(entry.id + ":")}
    assert sum(s.enqueued for s in schedulers) == len(ids)
    listed = await list_entries(clients[0])
    assert sorted(e.id for e in listed) == sorted(e.id for e in es)
    one = next(e for e in listed if e.id == es[0].id)
    assert one.spec == "@every 1s" and one.task_type == "tick0" and list(one.enqueue_options) == ['Queue("ticks")']
    assert one.next_enqueue_time.seconds > start
    # written at start (every 5 s after): no run yet is Go's zero time, as asynq writes it
    assert one.prev_enqueue_time.seconds in (-62135596800, *range(int(start) - 1, int(end) + 1))
    assert b"ticks" in r.smembers(keys.ALL_QUEUES)
    for c in clients:
        await c.aclose()


async def test_a_scheduler_cancelled_mid_enqueue_loses_no_tick(r, redis_url):
    """Schedulers are cancelled and restarted at random moments (inside a round trip too)
    while one other keeps running: no tick is lost or doubled."""
    import random

    es = entries([{"every": "1s", "type": f"t{i}", "queue": "ticks"} for i in range(30)])
    steady = Scheduler(aioredis.from_url(redis_url), es)
    steady.start()
    start = time.time()
    rng = random.Random(7)
    while time.time() - start < 4:
        flaky = Scheduler(aioredis.from_url(redis_url), es)
        flaky.start()
        await asyncio.sleep(rng.uniform(0.0, 0.6))
        flaky._task.cancel()  # not stop(): cut off wherever it is
        await flaky.store.redis.aclose()
    end = time.time()
    await steady.stop()
    ids = _tick_tasks(r, "ticks")
    assert len(ids) == len(set(ids))
    for entry in es:
        for tick in range(int(start) + 1, int(end)):
            assert task_id(entry, tick) in ids


async def test_missed_ticks_skip_or_run_once(r, redis_url):
    """A fleet stopped for longer than an interval: ``skip`` enqueues nothing for the gap,
    ``run_once`` enqueues the latest missed tick once at start (and not for a new entry)."""
    client = aioredis.from_url(redis_url)
    skip, once, fresh = entries([
        {"every": "2s", "type": "skip", "queue": "ticks"},
        {"every": "2s", "type": "once", "queue": "ticks", "missed": "run_once"},
        {"every": "2s", "type": "fresh", "queue": "ticks", "missed": "run_once"},
    ])
    first = Scheduler(client, [skip, once])
    await _run_for([first], 2.3)  # at least one tick of each
    assert first.enqueued >= 2
    await asyncio.sleep(4.2)  # two or more ticks due with no scheduler running
    # start just after a tick is due, so no regular tick falls in the 0.3 s looked at below
    await asyncio.sleep(once.prev_tick(time.time()) + 2 + 0.1 - time.time())
    before = set(_tick_tasks(r, "ticks"))
    t0 = time.time()
    again = Scheduler(client, [skip, once, fresh])
    again.start()
    await asyncio.sleep(0.3)
    new = set(_tick_tasks(r, "ticks")) - before
    assert {i.split(":")[0] for i in new} == {once.id}, new  # skip and the new entry: nothing yet
    (tid,) = new
    assert int(tid.split(":")[1]) == once.prev_tick(t0)
    # a second start in the same interval finds the tick enqueued: nothing more
    third = Scheduler(client, [once])
    third.start()
    await asyncio.sleep(0.3)
    await third.stop()
    await again.stop()
    later = set(_tick_tasks(r, "ticks")) - before - new
    assert all(int(i.split(":")[1]) > t0 for i in later), later  # regular ticks only
    await client.aclose()


async def test_redis_down_then_back_loses_only_the_ticks_it_was_down_for(redis_url, r):
    """A scheduler whose Redis refuses it keeps trying and enqueues on time once it answers."""
    es = entries([{"every": "1s", "type": "t", "queue": "ticks"}])
    bad = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    s = Scheduler(bad, es)
    s.start()
    await asyncio.sleep(1.5)
    assert s.errors >= 1 and s.enqueued == 0
    await s.stop()
    good = Scheduler(aioredis.from_url(redis_url), es)
    start = time.time()
    await _run_for([good], 2.2)
    assert good.enqueued >= 2 and all(int(i.split(":")[1]) > start for i in _tick_tasks(r, "ticks"))
    await bad.aclose()


def test_queues_file_schedule_reaches_every_agent_through_registration():
    """The control server's queues file takes the same entries and hands them to each agent
    in its registration answer, with their IDs: agents of any queue run the same ticks."""
    from agent.bootstrap.register import parse_answer
    from agent.server.app import registration_answer
    from agent.server.queues import QueuesFileError, parse_queues
    from tests.test_server import queues_doc

    doc = queues_doc()
    doc["schedule"] = [{"cron": "*/5 * * * *", "type": "report", "payload": {"k": 1}, "queue": "emails",
                        "timezone": "Europe/Paris", "missed": "run_once"},
                       {"every": "30s", "type": "ping", "queue": "inference.high", "max_retry": 2}]
    settings = parse_queues(doc, redis_url="redis://127.0.0.1:6379/0")
    assert [e.type for e in settings.schedule] == ["report", "ping"]
    for queue in settings.queues.values():
        answer = registration_answer(settings, queue)
        _, reg = parse_answer(answer, queue.name, "http://control")
        assert reg.schedule == settings.schedule
    doc["schedule"] = [{"every": "30s"}]
    with pytest.raises(QueuesFileError) as err:
        parse_queues(doc)
    assert "schedule[0].type" in str(err.value)
