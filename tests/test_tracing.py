"""OpenTelemetry tracing (docs/tracing.md): producer -> agent attempt -> child handler, one
connected trace per task across retries, through a real agent and real children.

The end-to-end tests run the producer and the agent as subprocesses with the SDK's
InMemorySpanExporter (tests/tracing/*_main.py) and the children with a JSON-lines exporter
(tests/apps/traced_worker.py), then join the three by trace and span IDs. This process keeps
the API's default (no SDK provider installed), as every other test here expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from agent.broker import keys
from agent.client import Client
from agent.inspect import Inspector
from agent.server import create_app, parse_queues
from agent.supervisor.protocol import encode_request
from agent.supervisor.task_request import TaskRequest
from task_sdk.tracing import exporters_named
from tests.agentproc import AgentProcess, local_config, wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytest.importorskip("opentelemetry.sdk")

HERE = Path(__file__).parent
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # W3C's own example


# -- pieces ----------------------------------------------------------------------------------

@pytest.mark.parametrize("env, names", [
    ({}, []), ({"OTEL_TRACES_EXPORTER": "none"}, []), ({"OTEL_TRACES_EXPORTER": " None "}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_tracing_is_on_only_when_an_exporter_is_named(monkeypatch, env, names):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert exporters_named() == names


def test_request_line_carries_traceparent_only_when_set():
    plain = json.loads(encode_request(TaskRequest("t1", "x", b'{"a":1}')))
    assert "traceparent" not in plain
    traced = json.loads(encode_request(TaskRequest("t1", "x", b'{"a":1}', traceparent=TP)))
    assert traced["traceparent"] == TP and traced["payload"] == {"a": 1}


def test_client_outside_a_trace_writes_no_headers(redis_url):
    with Client(redis_url) as client:
        info = client.enqueue("x", {"n": 1})
        assert client.get_task("default", info.id).headers == {}
        # a traceparent set by the caller (as a Go producer sets asynq.Header) is kept as is
        info = client.enqueue("x", {"n": 2}, headers={"traceparent": TP, "k": "v"})
        assert client.get_task("default", info.id).headers == {"traceparent": TP, "k": "v"}


def test_http_enqueue_continues_the_callers_trace(redis_url):
    doc = {"api_keys": [{"name": "p", "key": "client-key-0123456789", "role": "client"}],
           "queues": {"emails": {"priority": 1, "deployment": {
               "git_url": "https://git.example/acme/emails.git", "startup_cmd": "python w.py"}}}}
    auth = {"Authorization": "Bearer client-key-0123456789"}
    with TestClient(create_app(parse_queues(doc, redis_url=redis_url))) as http, \
            Client(redis_url) as client:
        resp = http.post("/tasks", headers={**auth, "traceparent": TP},
                         json={"type": "email:send", "queue": "emails", "payload": {}})
        assert resp.status_code == 201, resp.text
        headers = client.get_task("emails", resp.json()["id"]).headers
        # no SDK in this process: the enqueue span is the API's no-op, carrying the caller's
        # context, so the task joins the caller's trace under the caller's span
        assert headers["traceparent"] == TP
        assert int(headers["rundown-enqueued-at"]) > 0
        resp = http.post("/tasks", headers=auth, json={"type": "email:send", "queue": "emails"})
        assert client.get_task("emails", resp.json()["id"]).headers == {}
        # the body's own traceparent wins over the HTTP header
        body_tp = "00-11111111111111111111111111111111-2222222222222222-01"
        resp = http.post("/tasks/batch", headers={**auth, "traceparent": TP}, json={"tasks": [
            {"type": "a", "queue": "emails", "headers": {"traceparent": body_tp}},
            {"type": "b", "queue": "emails"}]})
        ids = [r["id"] for r in resp.json()["results"]]
        assert client.get_task("emails", ids[0]).headers == {"traceparent": body_tp}
        assert client.get_task("emails", ids[1]).headers["traceparent"] == TP


# -- end to end -------------------------------------------------------------------------------

def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def _run_producer(tmp_path: Path, redis_url: str, tasks: list) -> tuple[list[str], list[dict]]:
    plan = tmp_path / "tasks.json"
    plan.write_text(json.dumps(tasks))
    spans, ids = tmp_path / "producer-spans.jsonl", tmp_path / "ids.json"
    subprocess.run([sys.executable, str(HERE / "tracing" / "producer_main.py"), redis_url,
                    str(plan), str(spans), str(ids)], check=True, timeout=120)
    return json.loads(ids.read_text()), _lines(spans)


def _start_agent(tmp_path: Path, redis_url: str, name: str, *, traced: bool = True,
                 concurrency: int = 4, app: str = "traced_worker.py", env_extra=None,
                 **kwargs) -> AgentProcess:
    kwargs.setdefault("processes", "auto")
    config, port = local_config(
        tmp_path, redis_url, ["traced"], concurrency=concurrency,
        startup_cmd=f"python {app}",
        extra_env={"SPAN_FILE": str(tmp_path / "child-spans.jsonl"), **(env_extra or {})},
        **kwargs)
    agent = AgentProcess(config, port, tmp_path / f"{name}.log")
    agent._log = open(agent.log_path, "ab")  # noqa: SIM115 - closed by wait()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONUNBUFFERED="1", AGENT_SPAN_FILE=str(tmp_path / f"{name}-spans.jsonl"))
    if traced:  # on by the environment; agent_main installed its in-memory provider first
        env["OTEL_TRACES_EXPORTER"] = "console"
    agent.proc = subprocess.Popen(
        [sys.executable, str(HERE / "tracing" / "agent_main.py"), "-config", str(config)],
        stdout=agent._log, stderr=subprocess.STDOUT, env=env)
    agent.wait_ready(60)
    return agent


def _outcomes(agent: AgentProcess) -> float:
    """Outcomes the agent has recorded (its ``rundown_tasks_total`` counters, summed)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in agent.get("/metrics").text.splitlines()
               if line.startswith("rundown_tasks_total{"))


def _drained(r, queue: str = "traced") -> bool:
    return (r.llen(keys.pending(queue)) == 0 and r.llen(keys.active(queue)) == 0
            and r.zcard(keys.retry(queue)) == 0 and r.zcard(keys.scheduled(queue)) == 0)


def _by_task(spans: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        task_id = span["attributes"].get("rundown.task.id")
        if task_id:
            out[task_id].append(span)
    return out


@pytest.mark.timeout(300)
def test_thousand_tasks_each_one_connected_trace_across_retries(tmp_path, redis_url, r):
    """1,000 tasks: most succeed at once, 100 fail their first attempt, 4 kill their own child
    in the middle of the first attempt, 20 are slow. Each is one trace: producer span -> an
    agent span per attempt -> a handler span per attempt that reached its end -> the
    handler's own span."""
    kinds = ["traced:ok"] * 1000
    for i in range(0, 1000, 10):
        kinds[i] = "traced:flaky"
    for i in range(5, 1000, 50):
        kinds[i] = "traced:slow"
    for i in range(3, 1000, 250):  # a crash restarts its child after a backoff: a few only
        kinds[i] = "traced:crash"
    tasks = [[kind, {"n": i, "seconds": 0.05}, "traced"] for i, kind in enumerate(kinds)]
    ids, producer_spans = _run_producer(tmp_path, redis_url, tasks)
    assert len(ids) == len(set(ids)) == 1000
    agent = _start_agent(tmp_path, redis_url, "agent")
    # a crashed attempt is retried after asynq's default backoff (15 s or more): run those
    # retries now, as `asynq task run` would (the trace must not care how a retry got due)
    inspector = Inspector(r)

    def drained() -> bool:
        inspector.run_all("traced", "retry")
        return _drained(r)

    wait_until(drained, timeout=240, interval=0.5, what="all 1,000 tasks done")
    assert agent.stop(60) == 0
    assert r.zcard(keys.archived("traced")) == 0

    produced = {s["attributes"]["rundown.task.id"]: s for s in producer_spans}
    attempts = _by_task(_lines(tmp_path / "agent-spans.jsonl"))
    child = _lines(tmp_path / "child-spans.jsonl")
    handlers = _by_task([s for s in child if s["name"].startswith("handle ")])
    user_parents = defaultdict(list)
    for span in child:
        if span["name"] == "user work":
            user_parents[span["parent_id"]].append(span)

    traces = set()
    for task_id, kind in zip(ids, kinds, strict=True):
        root = produced[task_id]
        assert root["parent_id"] is None and root["kind"] == "PRODUCER", root
        trace_id = root["trace_id"]
        traces.add(trace_id)
        runs = sorted(attempts[task_id], key=lambda s: s["attributes"]["rundown.task.retry_count"])
        expected_runs = 2 if kind in ("traced:flaky", "traced:crash") else 1
        assert len(runs) == expected_runs, (task_id, kind, runs)
        for n, span in enumerate(runs):
            assert span["trace_id"] == trace_id and span["parent_id"] == root["span_id"], span
            assert span["kind"] == "CONSUMER" and span["name"] == f"process {kind}"
            attrs = span["attributes"]
            assert attrs["rundown.task.retry_count"] == n and attrs["rundown.task.queue"] == "traced"
            assert attrs["rundown.task.type"] == kind and attrs["rundown.task.queue_wait_s"] >= 0
        assert runs[-1]["status"] == "UNSET" and runs[-1]["attributes"]["rundown.task.state"] == "deleted"
        if expected_runs == 2:
            assert runs[0]["status"] == "ERROR" and runs[0]["attributes"]["rundown.task.state"] == "retry"
        run_ids = {s["span_id"] for s in runs}
        handled = handlers[task_id]
        # a crashed first attempt leaves no handler span (its child died inside it)
        assert len(handled) == (1 if kind != "traced:flaky" else 2), (task_id, kind, handled)
        for span in handled:
            assert span["trace_id"] == trace_id and span["parent_id"] in run_ids, span
            inner = user_parents[span["span_id"]]
            assert len(inner) == 1 and inner[0]["trace_id"] == trace_id
        if kind == "traced:flaky":
            assert sorted(s["status"] for s in handled) == ["ERROR", "UNSET"]
    assert len(traces) == 1000


def test_async_handlers_run_inside_the_attempts_span(tmp_path, redis_url, r):
    """An async-only child (its event loop, not the inline path): 16 handlers at once, each
    in its own span under its attempt, the handler's own span under that."""
    tasks = [["traced:async", {"n": i, "fail_first": i % 4 == 0}, "traced"] for i in range(200)]
    ids, producer_spans = _run_producer(tmp_path, redis_url, tasks)
    agent = _start_agent(tmp_path, redis_url, "async", app="traced_async_worker.py", concurrency=16)
    wait_until(lambda: _drained(r), timeout=120, what="tasks done")
    assert agent.stop(60) == 0
    produced = {s["attributes"]["rundown.task.id"]: s for s in producer_spans}
    attempts = _by_task(_lines(tmp_path / "async-spans.jsonl"))
    child = _lines(tmp_path / "child-spans.jsonl")
    handlers = _by_task([s for s in child if s["name"].startswith("handle ")])
    inner = {s["parent_id"]: s for s in child if s["name"] == "user work"}
    for n, task_id in enumerate(ids):
        runs = attempts[task_id]
        assert len(runs) == (2 if n % 4 == 0 else 1)
        assert {s["parent_id"] for s in runs} == {produced[task_id]["span_id"]}
        assert {s["trace_id"] for s in runs + handlers[task_id]} == {produced[task_id]["trace_id"]}
        assert sorted(s["parent_id"] for s in handlers[task_id]) == sorted(s["span_id"] for s in runs)
        for span in handlers[task_id]:
            assert inner[span["span_id"]]["trace_id"] == span["trace_id"]


@pytest.mark.parametrize("start", ["fork", "exec"])
def test_one_shot_tasks_export_their_handler_spans(tmp_path, redis_url, r, start):
    """one_shot: a process per task, forked by the zygote (the app's span processor exports
    at once: a batch processor's thread would make the zygote refuse to fork) or executed
    (a batch processor, flushed when the process exits)."""
    tasks = [["traced:flaky" if i % 5 == 0 else "traced:ok", {"n": i}, "traced"] for i in range(20)]
    ids, producer_spans = _run_producer(tmp_path, redis_url, tasks)
    agent = _start_agent(tmp_path, redis_url, f"one-shot-{start}", mode="one_shot",
                         app="traced_worker.py --once", one_shot_start=start,
                         env_extra={"SPAN_BATCH": "1"} if start == "exec" else None)
    wait_until(lambda: _drained(r), timeout=120, what="tasks done")
    assert agent.stop(60) == 0
    assert "start by exec, not fork" not in agent.output()
    attempts = _by_task(_lines(tmp_path / f"one-shot-{start}-spans.jsonl"))
    handlers = _by_task([s for s in _lines(tmp_path / "child-spans.jsonl")
                         if s["name"].startswith("handle ")])
    for n, task_id in enumerate(ids):
        assert len(attempts[task_id]) == (2 if n % 5 == 0 else 1)
        assert sorted(s["parent_id"] for s in handlers[task_id]) == \
            sorted(s["span_id"] for s in attempts[task_id]), (task_id, handlers[task_id])


def test_drained_agent_and_a_second_agent_continue_one_trace(tmp_path, redis_url, r):
    """Adversarial: the first agent is stopped with tasks running past its shutdown timeout
    (their children are killed, the tasks requeued); a second agent finishes them. Each task's
    attempts from both agents are in its producer's trace, and every attempt span ended."""
    tasks = [["traced:slow", {"n": i, "seconds": 3}, "traced"] for i in range(4)]
    ids, producer_spans = _run_producer(tmp_path, redis_url, tasks)
    first = _start_agent(tmp_path, redis_url, "first", shutdown_timeout="0.5s")
    wait_until(lambda: r.llen(keys.active("traced")) == 4, timeout=30, what="4 tasks running")
    assert first.stop(60) == 0
    assert r.llen(keys.pending("traced")) == 4
    second = _start_agent(tmp_path, redis_url, "second")
    wait_until(lambda: _drained(r), timeout=60, what="the requeued tasks done")
    assert second.stop(60) == 0

    produced = {s["attributes"]["rundown.task.id"]: s for s in producer_spans}
    before = _by_task(_lines(tmp_path / "first-spans.jsonl"))
    after = _by_task(_lines(tmp_path / "second-spans.jsonl"))
    handlers = _by_task([s for s in _lines(tmp_path / "child-spans.jsonl")
                         if s["name"].startswith("handle ")])
    for task_id in ids:
        root = produced[task_id]
        (cut,), (done,) = before[task_id], after[task_id]
        for span in (cut, done):
            assert span["trace_id"] == root["trace_id"] and span["parent_id"] == root["span_id"]
        assert cut["attributes"]["rundown.task.outcome"] == "requeue"
        assert cut["attributes"]["rundown.task.state"] == "pending"
        assert done["attributes"]["rundown.task.state"] == "deleted"
        # the killed first run exported nothing; the second run's handler span is under `done`
        assert [s["parent_id"] for s in handlers[task_id]] == [done["span_id"]]


def test_a_traceparent_set_by_another_producer_is_continued(tmp_path, redis_url, r):
    """What a Go producer writes with asynq.NewTaskWithHeaders: TaskMessage.headers holding a
    W3C traceparent (here through our client, which keeps a caller's traceparent as is). The
    agent's attempts and the handlers join that trace under that span."""
    _, trace_id, parent_id, _ = TP.split("-")
    with Client(redis_url) as client:
        ids = [client.enqueue("traced:flaky", {"n": i}, queue="traced", max_retry=2,
                              headers={"traceparent": TP}).id for i in range(5)]
    agent = _start_agent(tmp_path, redis_url, "external")
    wait_until(lambda: _drained(r), timeout=60, what="tasks done")
    # and the agent has seen all 10 outcomes through (its attempt spans end before they count)
    wait_until(lambda: _outcomes(agent) >= 10, timeout=30, what="10 outcomes counted by the agent")
    assert agent.stop(60) == 0
    attempts = _by_task(_lines(tmp_path / "external-spans.jsonl"))
    handlers = _by_task([s for s in _lines(tmp_path / "child-spans.jsonl")
                         if s["name"].startswith("handle ")])
    for task_id in ids:
        runs = attempts[task_id]
        assert len(runs) == 2 and {(s["trace_id"], s["parent_id"]) for s in runs} == {(trace_id, parent_id)}
        assert "rundown.task.queue_wait_s" not in runs[0]["attributes"]  # no rundown-enqueued-at
        assert sorted(s["parent_id"] for s in handlers[task_id]) == sorted(s["span_id"] for s in runs)


def test_untraced_producer_retries_join_the_first_attempts_trace(tmp_path, redis_url, r):
    """A task enqueued with no traceparent: its first attempt is a root span, and its retry is
    a child of that attempt (the failure wrote the attempt's traceparent into the headers)."""
    with Client(redis_url) as client:  # no SDK in this process: nothing written
        ids = [client.enqueue("traced:flaky", {"n": i}, queue="traced", max_retry=2).id
               for i in range(10)]
        assert all(client.get_task("traced", i).headers == {} for i in ids)
    agent = _start_agent(tmp_path, redis_url, "untraced")
    wait_until(lambda: _drained(r), timeout=60, what="tasks done")
    assert agent.stop(60) == 0
    attempts = _by_task(_lines(tmp_path / "untraced-spans.jsonl"))
    for task_id in ids:
        first, second = sorted(attempts[task_id],
                               key=lambda s: s["attributes"]["rundown.task.retry_count"])
        assert first["parent_id"] is None and first["status"] == "ERROR"
        assert second["parent_id"] == first["span_id"] and second["trace_id"] == first["trace_id"]


def test_tracing_off_sends_no_context_to_the_child(tmp_path, redis_url, r):
    """With OTEL_TRACES_EXPORTER unset the agent makes no span, sends no traceparent to its
    children (so they import nothing) and leaves the task's headers as the producer wrote
    them."""
    tasks = [["traced:flaky", {"n": i}, "traced"] for i in range(20)]
    ids, producer_spans = _run_producer(tmp_path, redis_url, tasks)
    agent = _start_agent(tmp_path, redis_url, "off", traced=False)
    wait_until(lambda: _drained(r), timeout=60, what="tasks done")
    assert agent.stop(60) == 0
    assert _lines(tmp_path / "off-spans.jsonl") == []
    # the child's own spans exist (it installs an SDK), but none is a handler span of the SDK
    child = _lines(tmp_path / "child-spans.jsonl")
    assert child and not [s for s in child if s["name"].startswith("handle ")]
    assert all(s["parent_id"] is None for s in child)  # "user work" has no parent: no context
    assert len(producer_spans) == 20


def test_without_opentelemetry_producer_and_sdk_do_nothing(redis_url):
    out = subprocess.run([sys.executable, str(HERE / "tracing" / "without_otel.py"), "check", redis_url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_agent_without_opentelemetry_runs_with_tracing_asked_for(tmp_path, redis_url, r):
    """OTEL_TRACES_EXPORTER set, the otel extra missing: one warning, and every task runs (its
    producer's traceparent kept in its headers, none sent to the child)."""
    with Client(redis_url) as client:
        ids = [client.enqueue("traced:flaky", {"n": i}, queue="traced", max_retry=2,
                              headers={"traceparent": TP}).id for i in range(10)]
    config, port = local_config(tmp_path, redis_url, ["traced"], concurrency=2,
                                startup_cmd="python traced_worker.py",
                                extra_env={"SPAN_FILE": str(tmp_path / "child-spans.jsonl")})
    agent = AgentProcess(config, port, tmp_path / "agent.log")
    agent._log = open(agent.log_path, "ab")  # noqa: SIM115 - closed by wait()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OTEL_TRACES_EXPORTER": "console"}
    agent.proc = subprocess.Popen(
        [sys.executable, str(HERE / "tracing" / "without_otel.py"), "agent", "-config", str(config)],
        stdout=agent._log, stderr=subprocess.STDOUT, env=env)
    agent.wait_ready(60)
    wait_until(lambda: _drained(r), timeout=60, what="tasks done")
    assert agent.stop(60) == 0
    log = agent.output()
    assert log.count("opentelemetry is not installed") == 1, log
    child = _lines(tmp_path / "child-spans.jsonl")
    assert len(child) == 20 and not [s for s in child if s["name"].startswith("handle ")]
    assert len(ids) == 10 and r.zcard(keys.archived("traced")) == 0


FLUSH_CHECK = """
import os, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from task_sdk import tracing

class Exporter(InMemorySpanExporter):
    def export(self, spans):
        with open(sys.argv[1], "a") as out:
            out.writelines(span.name + "\\n" for span in spans)
        return super().export(spans)

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Exporter(), schedule_delay_millis=60_000))
trace.set_tracer_provider(provider)
message = {"task_id": "t1", "type": "x", "traceparent": "TRACEPARENT"}
assert tracing.wanted(message)
tracing.run(message, lambda: b'{"task_id":"t1","result":1,"error":null,"retry":false}\\n')
if sys.argv[2] == "flush":
    tracing.flush()
os._exit(0)  # as a forked one_shot task ends: no atexit hook runs
""".replace("TRACEPARENT", TP)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_exports_held_spans_before_os_exit(tmp_path, flush):
    """The zygote's forked task calls ``task_sdk.tracing.flush()`` before ``os._exit``: held
    spans are exported then, and lost without it."""
    out = tmp_path / "spans.txt"
    subprocess.run([sys.executable, "-c", FLUSH_CHECK, str(out), "flush" if flush else "no"],
                   check=True, timeout=60)
    names = out.read_text().split() if out.exists() else []
    assert names == (["handle", "x"] if flush else [])
