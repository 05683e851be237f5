"""The inspection CLI (click's CliRunner) against a real Redis filled by the wire layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent.broker import Broker, keys
from agent.broker.messages import ServerInfo, WorkerInfo, encode
from agent.inspect.cli import describe_bytes, format_duration, inspect_cli, redact
from agent.inspect.tables import fair_share
from agent.local_redis import free_port
from tests.test_inspect import GO_TASK, Q, seed


@pytest.fixture
async def filled(redis_url, r):
    await seed(redis_url)
    return r


@pytest.fixture
def run(redis_url, monkeypatch):
    monkeypatch.delenv("RUNDOWN_REDIS_URL", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    runner = CliRunner()

    def invoke(*args: str, url: str | None = None):
        return runner.invoke(inspect_cli, ["--redis", url or redis_url, *args])

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def rows(output: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell (cells are separated by 2+ spaces)."""
    table = {}
    for line in output.splitlines():
        cells = [c for c in line.strip().split("  ") if c.strip()]
        if cells:
            table[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return table


async def test_stats_table_and_json(filled, run):
    out = ok(run("stats"))
    lines = out.splitlines()
    assert lines[0] == f"Queues (processed and failed today: {keys.utc_date()} UTC)"
    assert lines[1].split() == ["Queue", "Pending", "Active", "Scheduled", "Retry", "Archived",
                                "Completed", "Aggregating", "Processed", "Failed", "Latency",
                                "Paused"]
    table = rows(out)
    assert table["default"][:9] == ["2", "1", "2", "1", "1", "1", "2", "3", "2"]
    assert table["default"][10] == "no" and table["default"][9][-1] == "s"  # e.g. 15ms
    assert table["low"][:9] == ["1", "0", "0", "0", "0", "0", "0", "0", "0"] and table["low"][-1] == "yes"
    assert table["total"] == ["3", "1", "2", "1", "1", "1", "2", "3", "2"]
    assert all(line == line.rstrip() for line in lines)

    data = json.loads(ok(run("--json", "stats")))
    assert data["date"] == keys.utc_date()
    default = next(q for q in data["queues"] if q["queue"] == "default")
    assert {k: default[k] for k in ("pending", "active", "scheduled", "retry", "archived",
                                    "completed", "aggregating", "processed", "failed",
                                    "processed_total", "failed_total", "paused", "size")} == {
        "pending": 2, "active": 1, "scheduled": 2, "retry": 1, "archived": 1, "completed": 1,
        "aggregating": 2, "processed": 3, "failed": 2, "processed_total": 3, "failed_total": 2,
        "paused": False, "size": 10}
    assert default["memory_usage"] > 0 and default["latency"] >= 0
    # --json is accepted after the command too
    assert json.loads(ok(run("stats", "--json")))["queues"][1]["paused"] is True


def test_stats_on_an_empty_redis(r, run):
    assert ok(run("stats")) == "No queues (asynq:queues is empty)\n"
    assert json.loads(ok(run("--json", "stats")))["queues"] == []


async def test_queue_history_pause_unpause_and_ls(filled, run):
    r = filled
    now = time.time()
    r.set(keys.processed_day(Q, now - 86400), 10)
    r.set(keys.failed_day(Q, now - 86400), 1)
    table = rows(ok(run("queue", "history", Q, "--days", "2")))
    assert table[keys.utc_date(now)] == ["3", "2", "66.7%"]
    assert table[keys.utc_date(now - 86400)] == ["10", "1", "10.0%"]
    days = json.loads(ok(run("--json", "queue", "history", Q, "--days", "3")))["days"]
    assert [d["processed"] for d in days] == [3, 10, 0]

    assert ok(run("queue", "pause", Q)) == "Paused queue 'default'\n"
    assert r.exists(keys.paused(Q))
    result = run("queue", "pause", Q)
    assert result.exit_code == 1 and result.stderr == "error: queue 'default' is already paused\n"
    assert json.loads(ok(run("queue", "unpause", Q, "--json"))) == {"queue": Q, "paused": False}
    assert not r.exists(keys.paused(Q))
    assert ok(run("queue", "ls")) == "default\nlow\n"


async def test_task_ls_tables(filled, run):
    out = ok(run("task", "ls", Q, "--state", "pending"))
    assert out.splitlines()[0] == "Pending tasks in queue 'default': 1-2 of 2 (page 1 of 1)"
    table = rows(out)
    assert table["ID"] == ["Type", "Payload", "Waiting", "Retried"]
    assert table["p1"][:2] == ["email:send", '{"to":"cy"}'] and table["p1"][-1] == "0/25"
    assert table["p2"][:2] == ["email:digest", "weekly"]
    assert list(table).index("p1") < list(table).index("p2")  # oldest first

    retry = rows(ok(run("task", "ls", Q, "-s", "retry")))
    assert retry["ID"] == ["Type", "Payload", "Next retry", "Retried", "Last error", "Last failed"]
    assert retry["r1"][:2] == ["email:send", '{"to":"bob"}']
    assert retry["r1"][2].startswith("in ") and retry["r1"][3:5] == ["1/25", "smtp: refused"]

    archived = rows(ok(run("task", "ls", Q, "-s", "archived")))
    assert archived["x1"][:2] == ["image:resize", "hex:89504e4700ff"]
    assert archived["x1"][3:] == ["0/0", "bad image"]

    completed = rows(ok(run("task", "ls", Q, "-s", "completed")))
    assert completed["c1"][1] == '{"m":5}' and completed["c1"][-1] == '{"rows":42}'
    assert completed["c1"][-2].startswith("in 59m") or completed["c1"][-2].startswith("in 1h")

    active = rows(ok(run("task", "ls", Q, "-s", "active")))
    assert active["a1"][-1].startswith("expires in ")
    grouped = rows(ok(run("task", "ls", Q, "-s", "aggregating", "-g", "batch")))
    assert grouped["g1"][:3] == ["metrics:flush", "1", "batch"]

    page = ok(run("task", "ls", Q, "-s", "scheduled", "--size", "1", "--page", "2"))
    assert page.splitlines()[0] == "Scheduled tasks in queue 'default': 2-2 of 2 (page 2 of 2)"
    assert ok(run("task", "ls", Q, "-s", "scheduled", "--page", "3")) == (
        "No scheduled tasks in queue 'default' on page 3 (2 in total)\n")
    assert ok(run("task", "ls", "low", "-s", "retry")) == "No retry tasks in queue 'low'\n"


async def test_task_ls_json(filled, run):
    data = json.loads(ok(run("--json", "task", "ls", Q, "--state", "archived")))
    assert (data["queue"], data["state"], data["page"], data["size"], data["total"]) == (
        Q, "archived", 1, 30, 1)
    (task,) = data["tasks"]
    assert task["id"] == "x1" and task["payload"] == {"encoding": "hex", "data": "89504e4700ff"}
    assert task["last_error"] == "bad image" and task["decode_error"] == ""
    data = json.loads(ok(run("--json", "task", "ls", Q, "--state", "completed")))
    assert data["tasks"][0]["result"] == {"encoding": "utf-8", "data": '{"rows":42}'}


async def test_go_task_and_corrupt_msg_in_the_listing(filled, run):
    r = filled
    r.hset(keys.task_key(Q, "t2"), mapping={"msg": GO_TASK, "state": "pending"})
    r.hset(keys.task_key(Q, "bad"), mapping={"msg": b"\xff\xff\xff", "state": "pending"})
    r.lpush(keys.pending(Q), "t2", "bad", "gone")
    out = ok(run("task", "ls", Q, "-s", "pending"))
    table = rows(out)
    assert table["t2"][0] == "x"
    assert table["bad"][0] == "(undecodable)" and "undecodable asynq TaskMessage" in table["bad"][1]
    assert table["gone"][:2] == ["(undecodable)", "the task hash has no msg field"]
    assert out.splitlines()[-1].startswith("2 task(s) have a msg that is not a valid")
    shown = ok(run("task", "show", Q, "t2"))
    assert "Header:       k: v\n" in shown and "Group:        g\n" in shown
    assert "Unique key:   asynq:{q}:unique:x:\n" in shown
    shown = ok(run("task", "show", Q, "bad"))
    assert shown.splitlines()[3].startswith("Undecodable:  undecodable asynq TaskMessage")


async def test_task_show_text_and_json(filled, run):
    out = ok(run("task", "show", Q, "r1"))
    lines = out.splitlines()
    assert lines[:5] == ["Queue:        default", "ID:           r1", "State:        retry",
                         "Type:         email:send", "Retried:      1/25"]
    assert lines[5].startswith("Next process: ") and "(in " in lines[5]
    assert "Last error:   smtp: refused" in lines and "Timeout:      30m0s" in lines
    assert out.endswith('Payload (JSON):\n{\n  "to": "bob"\n}\n')

    out = ok(run("task", "show", Q, "c1"))
    assert "Retention:    1h0m0s" in out and out.endswith('Result (JSON):\n{\n  "rows": 42\n}\n')
    assert "Next process: n/a" in out
    out = ok(run("task", "show", Q, "x1"))
    assert out.endswith("Payload (binary, 6 bytes, hex):\n89504e4700ff\n")
    assert "Next process: now" in ok(run("task", "show", Q, "p2"))

    data = json.loads(ok(run("--json", "task", "show", Q, "r1")))
    assert (data["state"], data["retried"], data["max_retry"], data["last_error"]) == (
        "retry", 1, 25, "smtp: refused")
    assert data["next_process_at"] == int(filled.zscore(keys.retry(Q), "r1"))
    assert data["payload"] == {"encoding": "utf-8", "data": '{"to":"bob"}'}


async def test_single_task_actions_change_redis(filled, run):
    r = filled
    assert ok(run("task", "retry", Q, "r1")) == "Task r1 of queue 'default' moved to pending\n"
    assert r.lindex(keys.pending(Q), 0) == b"r1" and not r.exists(keys.retry(Q))
    assert ok(run("task", "archive", Q, "p1")) == "Task p1 of queue 'default' archived\n"
    assert r.zscore(keys.archived(Q), "p1") is not None
    lock = keys.unique_key(Q, "email:digest", b"weekly")
    assert json.loads(ok(run("task", "delete", Q, "p2", "--json"))) == {
        "queue": Q, "id": "p2", "action": "delete", "state": "deleted"}
    assert not r.exists(keys.task_key(Q, "p2"), lock)


async def test_bulk_actions_change_redis(filled, run):
    r = filled
    assert ok(run("task", "retry-all", Q, "--state", "scheduled")) == (
        "2 scheduled task(s) of queue 'default' moved to pending\n")
    assert not r.exists(keys.scheduled(Q)) and r.llen(keys.pending(Q)) == 4
    assert ok(run("task", "archive-all", Q, "--state", "pending")) == (
        "4 pending task(s) of queue 'default' archived\n")
    assert r.zcard(keys.archived(Q)) == 5 and not r.exists(keys.pending(Q))
    data = json.loads(ok(run("--json", "task", "delete-all", Q, "--state", "aggregating",
                             "--group", "batch")))
    assert data == {"queue": Q, "state": "aggregating", "group": "batch",
                    "action": "delete-all", "count": 2}
    assert not r.exists(keys.group(Q, "batch"), keys.groups(Q))
    result = run("task", "archive-all", Q, "--state", "archived")
    assert result.exit_code == 2 and "Invalid value for '--state'" in result.stderr


async def test_errors_are_one_line_and_exit_1(filled, run, redis_url):
    cases = [
        (("task", "show", "nope", "x"), "error: queue 'nope' not found (it is not in asynq:queues)\n"),
        (("task", "show", Q, "nope"), "error: task 'nope' not found in queue 'default'\n"),
        (("task", "delete", Q, "a1"),
         "error: task 'a1' in queue 'default' is active: it cannot be deleted; cancel it instead\n"),
        (("task", "retry", Q, "p1"), "error: task 'p1' in queue 'default' is already pending\n"),
        (("task", "ls", Q, "-s", "aggregating"), "error: listing aggregating tasks needs a group\n"),
        (("queue", "history", "ghost"),
         "error: queue 'ghost' not found (it is not in asynq:queues)\n"),
    ]
    for args, message in cases:
        result = run(*args)
        assert (result.exit_code, result.stderr, result.stdout) == (1, message, ""), args
        assert "Traceback" not in result.output

    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = run("stats", url=dead)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "hunter2" not in result.stderr and len(result.stderr.splitlines()) == 1
    result = run("stats", url="http://example.com")
    assert result.exit_code == 1 and result.stderr.startswith("error: invalid Redis URL")


async def test_server_ls_with_workers(redis_url, r, run):
    assert ok(run("server", "ls")) == "No running servers\n"
    now = int(time.time())
    info = ServerInfo(host="web-1", pid=4242, server_id="sid-1", concurrency=10, status="active",
                      active_worker_count=1)
    info.queues.update({"critical": 6, "default": 3, "low": 1})
    info.start_time.seconds = now - 600
    worker = WorkerInfo(host="web-1", pid=4242, server_id="sid-1", task_id="a1",
                        task_type="email:send", task_payload=b'{"to":"ann"}', queue="default")
    worker.start_time.seconds = now - 5
    worker.deadline.seconds = now + 1795
    server_key, workers_key = keys.server_info("web-1", 4242, "sid-1"), keys.workers("web-1", 4242, "sid-1")
    r.set(server_key, encode(info))
    r.hset(workers_key, "a1", encode(worker))
    r.zadd(keys.ALL_SERVERS, {server_key: now + 10})
    r.zadd(keys.ALL_WORKERS, {workers_key: now + 10})

    out = ok(run("server", "ls"))
    table = rows(out)
    assert table["Host"] == ["PID", "Status", "Active", "Queues", "Started", "ID"]
    assert table["web-1"][:4] == ["4242", "active", "1/10", "critical:6 default:3 low:1"]
    assert table["web-1"][4].startswith("10m") and table["web-1"][5] == "sid-1"
    assert "Active workers" not in out

    out = ok(run("server", "ls", "--workers"))
    workers = rows(out.split("Active workers\n")[1])
    assert workers["web-1:4242"][:4] == ["a1", "email:send", "default", '{"to":"ann"}']
    assert workers["web-1:4242"][5].startswith("in 29m")

    (data,) = json.loads(ok(run("--json", "server", "ls")))
    assert (data["host"], data["pid"], data["queues"], data["active_worker_count"]) == (
        "web-1", 4242, {"critical": 6, "default": 3, "low": 1}, 1)
    assert data["active_workers"][0]["task_payload"] == {"encoding": "utf-8", "data": '{"to":"ann"}'}


def test_cancel(r, run):
    sub = r.pubsub()
    sub.subscribe(keys.CANCEL_CHANNEL)
    sub.get_message(timeout=2)
    assert ok(run("task", "cancel", "a1", "b2")) == (
        "Sent a cancellation signal for task a1 (received by 1 server(s))\n"
        "Sent a cancellation signal for task b2 (received by 1 server(s))\n")
    assert [sub.get_message(timeout=2)["data"] for _ in range(2)] == [b"a1", b"b2"]
    sub.close()
    assert json.loads(ok(run("--json", "task", "cancel", "c3"))) == [{"id": "c3", "receivers": 0}]


async def test_env_var_and_mounting_in_another_group(filled, redis_url, monkeypatch):
    monkeypatch.setenv("RUNDOWN_REDIS_URL", redis_url)

    @click.group()
    @click.pass_context
    def outer(ctx: click.Context) -> None:
        ctx.obj = {"something": "else"}  # the parent's own context object

    outer.add_command(inspect_cli, "inspect")
    runner = CliRunner()
    result = runner.invoke(outer, ["inspect", "--json", "queue", "ls"])
    assert result.exit_code == 0 and json.loads(result.stdout) == ["default", "low"]
    result = runner.invoke(outer, ["inspect", "task", "show", "nope", "x"])
    assert result.exit_code == 1
    assert result.stderr == "error: queue 'nope' not found (it is not in asynq:queues)\n"


async def test_python_dash_m_runs_standalone(filled, redis_url):
    env = {**os.environ, "RUNDOWN_REDIS_URL": redis_url}
    done = subprocess.run([sys.executable, "-m", "agent.inspect", "--json", "task", "ls", Q,
                           "--state", "retry"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [t["id"] for t in json.loads(done.stdout)["tasks"]] == ["r1"]
    done = subprocess.run([sys.executable, "-m", "agent.inspect", "task", "show", Q, "zz"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (1, "error: task 'zz' not found in queue 'default'\n")


def test_formatting_helpers():
    assert [format_duration(s) for s in (0.25, 3, 12.5, 65, 3600, 3725, 90000)] == [
        "250ms", "3s", "12.5s", "1m5s", "1h0m0s", "1h2m5s", "1d1h"]
    assert describe_bytes(b"") == ("empty", "")
    assert describe_bytes(b"plain text") == ("text", "plain text")
    assert describe_bytes(b'{"a":[1]}') == ("JSON", '{\n  "a": [\n    1\n  ]\n}')
    assert describe_bytes(b"\x00\x01") == ("binary, 2 bytes, hex", "0001")
    assert describe_bytes(b"\xff") == ("binary, 1 bytes, hex", "ff")
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


async def seed_docs_session(url: str) -> None:
    """The dataset of the session shown in docs/inspect.md."""
    b = Broker(aioredis.Redis.from_url(url))
    try:
        await b.enqueue("email:welcome", b'{"user":1042}', task_id="welcome-1042")
        await b.dequeue(Q)
        await b.enqueue("email:welcome", b'{"user":1043}', task_id="welcome-1043")
        (task,), _ = await b.dequeue(Q)
        await b.fail(task, "smtp: 421 try again later")
        await b.enqueue("image:resize", b"\x89PNG\r\n\x1a\n\x00\x00", task_id="resize-77",
                        max_retry=0)
        (task,), _ = await b.dequeue(Q)
        await b.fail(task, "decode: unsupported color profile")
        await b.enqueue("report:build", b'{"month":"2026-05"}', task_id="report-2026-05",
                        retention=86400)
        (task,), _ = await b.dequeue(Q)
        await b.complete(task, b'{"rows":1284,"url":"s3://reports/2026-05.csv"}')
        await b.enqueue("email:welcome", b'{"user":1044}', task_id="welcome-1044")
        await b.enqueue("email:digest", b"weekly", task_id="digest-w23", unique_ttl=3600)
        await b.enqueue("email:reminder", b'{"user":1042}', task_id="remind-1042", process_in=7200)
        await b.enqueue("metrics:flush", b'{"n":1}', task_id="flush-1", group="metrics")
        await b.enqueue("metrics:flush", b'{"n":2}', task_id="flush-2", group="metrics")
        await b.enqueue("cleanup:tmp", None, queue="low", task_id="cleanup-1")
        await b.pause("low")
    finally:
        await b.close()


async def test_docs_show_the_real_output(redis_url, run):
    """Every time-independent transcript of docs/inspect.md is what the CLI prints."""
    await seed_docs_session(redis_url)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "inspect.md").read_text()
    session = [
        "queue ls", "queue unpause low", "queue pause low", "queue pause low",
        "task ls default --state retry --page 2", "task cancel welcome-1042",
        "task show nope x", "task show default nope",
        "task retry default welcome-1043", "task archive default welcome-1044",
        "task delete default digest-w23", "task delete default welcome-1042",
        "task retry-all default --state archived", "task archive-all default --state aggregating",
        "task delete-all default --state archived", "--json task delete-all default --state scheduled",
    ]
    for command in session:
        result = run(*command.split())
        transcript = f"$ rundown-agent inspect {command}\n{result.output}"
        assert transcript in docs, transcript


async def seed_uuid_tasks(url: str) -> list[str]:
    """Tasks with asynq's default 36-character IDs in every listed state of queue 'default',
    each with a long payload and, where it has one, a long error or result."""
    payload = json.dumps({"to": "ada.lovelace@example.com", "subject": "monthly report " * 4}).encode()
    error = "smtp: 421 4.7.0 try again later, the remote host is rate limiting this sender"
    b = Broker(aioredis.Redis.from_url(url))
    ids: list[str] = []
    try:
        for state in ("retry", "archived", "completed", "active"):
            info = await b.enqueue("email:send", payload, max_retry=0 if state == "archived" else 25,
                                   retention=3600)
            ids.append(info.id)
            (task,), _ = await b.dequeue(Q)
            if state in ("retry", "archived"):
                await b.fail(task, error)
            elif state == "completed":
                await b.complete(task, payload)
        for _ in range(2):
            ids.append((await b.enqueue("email:send", payload)).id)
            ids.append((await b.enqueue("email:send", payload, process_in=3600)).id)
    finally:
        await b.close()
    assert all(len(i) == 36 for i in ids), ids
    return ids


@pytest.mark.parametrize("columns", [60, 80])
async def test_task_ls_never_wraps_or_cuts_an_id_on_a_narrow_terminal(redis_url, run, monkeypatch, columns):
    ids = await seed_uuid_tasks(redis_url)
    monkeypatch.setenv("COLUMNS", str(columns))
    shown: set[str] = set()
    for state in ("pending", "active", "scheduled", "retry", "archived", "completed"):
        out = ok(run("task", "ls", "default", "--state", state))
        lines = out.splitlines()
        listed = [i for i in ids if any(line.startswith(i + " ") for line in lines)]
        assert listed, out  # each full ID on one line, at the start of its row
        shown.update(listed)
        # nothing else of an ID is anywhere: no second line holding its tail
        assert all(out.count(i[-12:]) == 1 for i in listed), out
        if columns == 80:
            assert max(len(line) for line in lines[1:]) <= 80, out  # the table fits
            assert "…" in out, out  # the payload gave way first: elided on one line
            if state in ("pending", "active"):
                assert "email:send" in out, out  # ... so the short columns stay whole
    assert shown == set(ids)


def test_fair_share_serves_the_narrow_columns_first():
    assert fair_share([10, 3, 40], 30) == [10, 3, 17]
    assert fair_share([10, 3, 40], 100) == [10, 3, 40]
    assert fair_share([10, 10, 10], 12) == [4, 4, 4]
    assert fair_share([5, 5], -3) == [0, 0]


async def test_server_ls_keeps_task_and_server_ids_whole_at_80_columns(redis_url, r, run, monkeypatch):
    now = int(time.time())
    server_id, task_id = "2c3d9a6e-0f41-4a7c-9a57-1b2c3d4e5f60", "8f14e45f-ceea-467f-a0e6-0b3c2d1e4f5a"
    info = ServerInfo(host="worker-host-with-a-long-name.example.internal", pid=4242,
                      server_id=server_id, concurrency=10, status="active", active_worker_count=1)
    info.queues.update({"critical": 6, "default": 3, "low": 1, "emails": 1, "reports": 1})
    info.start_time.seconds = now - 600
    worker = WorkerInfo(host=info.host, pid=4242, server_id=server_id, task_id=task_id,
                        task_type="email:send", task_payload=b'{"to":"ada.lovelace@example.com"}',
                        queue="default")
    worker.start_time.seconds = now - 5
    worker.deadline.seconds = now + 1795
    server_key, workers_key = keys.server_info(info.host, 4242, server_id), keys.workers(info.host, 4242, server_id)
    r.set(server_key, encode(info))
    r.hset(workers_key, task_id, encode(worker))
    r.zadd(keys.ALL_SERVERS, {server_key: now + 10})
    r.zadd(keys.ALL_WORKERS, {workers_key: now + 10})
    monkeypatch.setenv("COLUMNS", "80")
    out = ok(run("server", "ls", "--workers"))
    assert any(line.rstrip().endswith(server_id) for line in out.splitlines()), out
    assert any(task_id in line for line in out.splitlines()), out
    assert max(len(line) for line in out.splitlines()) <= 80, out
