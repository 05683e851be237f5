"""rundown-server against a real redis-server: registration, the HTTP enqueue API (checked by
reading the asynq keys back with the project's client and broker), task status, queue stats,
auth, limits, the OpenAPI document, the queues file, and the real uvicorn / CLI process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, keys
from agent.client import Client
from agent.examples import QUEUES_FILE
from agent.inspect import Inspector
from agent.server import ServerThread, create_app, parse_queues
from agent.server.queues import QueuesFileError, load_queues_file, parse_seconds

with warnings.catch_warnings():  # Starlette suggests httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

WORKER_KEY = "worker-key-0123456789"
CLIENT_KEY = "client-key-0123456789"
ADMIN_KEY = "admin-key-0123456789ab"
W = {"Authorization": f"Bearer {WORKER_KEY}"}
C = {"Authorization": f"Bearer {CLIENT_KEY}"}
A = {"X-API-Key": ADMIN_KEY}


def queues_doc() -> dict:
    return {
        "api_keys": [
            {"name": "agents", "key": WORKER_KEY, "role": "worker"},
            {"name": "producer", "key": CLIENT_KEY, "role": "client"},
            {"name": "ops", "key": ADMIN_KEY, "role": "admin"},
        ],
        "vaults": {"llm": {"OPENAI_API_KEY": "sk-vault-secret-value"}},
        "queues": {
            "inference": {
                "sub_queues": [{"name": "low", "priority": 1}, {"name": "high", "priority": 6},
                               {"name": "default", "priority": 2}],
                "deployment": {
                    "git_url": "https://git.example/acme/inference.git", "branch": "main",
                    "code_path": "workers/inference", "startup_cmd": "python worker.py",
                    "mode": "one_shot", "startup_timeout_secs": 90, "processes": 2,
                    "env_vars": {"MODEL": "small", "BATCH": 8}, "vaults": ["llm"],
                    "secrets": {"HF_TOKEN": "hf-secret-value"}, "git_token": "ghp-secret-token"},
                "task_defaults": {"max_retry": 3, "timeout": "10m", "retention": "1h"},
            },
            "emails": {"priority": 3, "deployment": {
                "git_url": "https://git.example/acme/emails.git", "startup_cmd": "python -m emails"}},
        },
    }


@pytest.fixture
def settings(redis_url):
    return parse_queues(queues_doc(), redis_url=redis_url)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def producer(redis_url):
    with Client(redis_url) as c:
        yield c


def run(coro):
    return asyncio.run(coro)


async def _complete_one(redis_url: str, queue: str, result: bytes | None = None) -> str:
    broker = Broker(aioredis.Redis.from_url(redis_url))
    try:
        tasks, _ = await broker.dequeue(queue)
        assert tasks, f"nothing to dequeue in {queue}"
        await broker.complete(tasks[0], result)
        return tasks[0].id
    finally:
        await broker.close()


# -- registration --------------------------------------------------------------------------

def test_register_answers_in_runqys_shape(client, redis_url):
    resp = client.post("/worker/register", headers=W,
                       json={"queue": "inference", "hostname": "h1", "os": "linux", "version": "0.1.0"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert body["redis"] == {"addr": f"127.0.0.1:{port}", "password": "", "db": 0, "use_tls": False}
    assert body["queue"] == {"name": "inference", "priority": 6}
    assert body["sub_queues"] == [{"name": "inference.high", "priority": 6},
                                  {"name": "inference.default", "priority": 2},
                                  {"name": "inference.low", "priority": 1}]
    dep = body["deployment"]
    assert dep["git_url"] == "https://git.example/acme/inference.git"
    assert dep["mode"] == "one_shot" and dep["startup_timeout_secs"] == 90 and dep["processes"] == 2
    assert dep["env_vars"] == {"MODEL": "small", "BATCH": "8"} and dep["vaults"] == ["llm"]
    assert "secrets" not in dep and "git_token" not in dep
    assert body["vaults"] == {"OPENAI_API_KEY": "sk-vault-secret-value", "HF_TOKEN": "hf-secret-value"}
    assert body["git_token"] == "ghp-secret-token"


def test_register_alias_sub_queue_name_and_single_queue(client):
    resp = client.post("/workers/handshake", headers=W, json={"queue": "inference.high"})
    assert resp.status_code == 200 and resp.json()["queue"]["name"] == "inference"
    emails = client.post("/worker/register", headers={"X-API-Key": ADMIN_KEY}, json={"queue": "emails"}).json()
    assert emails["sub_queues"] == [{"name": "emails", "priority": 3}]
    assert "git_token" not in emails and emails["vaults"] == {}


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), ({"Authorization": "Bearer nope-nope-nope-nope"}, 401), ({"Authorization": "Basic abc"}, 401),
    (C, 403)])
def test_register_auth(client, headers, status):
    resp = client.post("/worker/register", headers=headers, json={"queue": "inference"})
    assert resp.status_code == status
    assert "error" in resp.json()
    if status == 401:
        assert resp.headers["www-authenticate"] == "Bearer"
    assert WORKER_KEY not in resp.text and CLIENT_KEY not in resp.text


def test_register_bad_requests(client):
    assert client.post("/worker/register", headers=W, json={"queue": "nope"}).status_code == 404
    assert "inference" in client.post("/worker/register", headers=W, json={"queue": "nope"}).json()["error"]
    assert client.post("/worker/register", headers=W, json={}).status_code == 400
    assert client.post("/worker/register", headers=W, content=b"{not json").status_code == 400
    assert client.post("/worker/register", headers=W, json=[1]).status_code == 400
    assert client.get("/worker/register", headers=W).status_code == 405


# -- enqueue -------------------------------------------------------------------------------

def test_enqueue_writes_asynq_tasks(client, producer):
    resp = client.post("/tasks", headers=C, json={
        "type": "email:send", "queue": "emails", "payload": {"to": "a@example.com"},
        "task_id": "t-1", "max_retry": 7, "timeout": 30, "retention": 120})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"] == "t-1" and body["state"] == "pending" and body["queue"] == "emails"
    info = producer.get_task("emails", "t-1")
    assert info.type == "email:send" and info.state == "pending" and info.max_retry == 7
    assert json.loads(info.payload) == {"to": "a@example.com"}
    assert producer.redis.lrange(keys.pending("emails"), 0, -1) == [b"t-1"]
    assert producer.redis.sismember(keys.ALL_QUEUES, "emails")


def test_enqueue_options_and_defaults(client, producer):
    # queue defaults: max_retry 3, timeout 10m, retention 1h; "inference" -> inference.default
    body = client.post("/tasks", headers=C, json={"type": "infer", "queue": "inference"}).json()
    assert body["queue"] == "inference.default"
    assert (body["max_retry"], body["timeout"], body["retention"]) == (3, 600, 3600)
    delayed = client.post("/tasks", headers=C, json={"type": "infer", "queue": "inference.low",
                                                     "process_in": 3600, "payload": "x"}).json()
    assert delayed["state"] == "scheduled" and delayed["process_at"] >= time.time() + 3500
    assert producer.get_task("inference.low", delayed["id"]).state == "scheduled"
    raw = client.post("/tasks", headers=C, json={"type": "bin", "queue": "emails",
                                                 "payload_base64": base64.b64encode(b"\x00\xff").decode()})
    assert producer.get_task("emails", raw.json()["id"]).payload == b"\x00\xff"
    first = client.post("/tasks", headers=C, json={"type": "u", "queue": "emails", "payload": 1, "unique": 60})
    again = client.post("/tasks", headers=C, json={"type": "u", "queue": "emails", "payload": 1, "unique": 60})
    assert first.status_code == 201 and again.status_code == 409 and "uniqueness" in again.json()["error"]
    client.post("/tasks", headers=C, json={"type": "t", "queue": "emails", "task_id": "same"})
    conflict = client.post("/tasks", headers=C, json={"type": "t", "queue": "emails", "task_id": "same"})
    assert conflict.status_code == 409 and "same" in conflict.json()["error"]


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"queue": "emails"}, 400, "type"),
    ({"type": "t"}, 400, "queue"),
    ({"type": "t", "queue": "nope"}, 404, "known queues"),
    ({"type": "t", "queue": "emails", "max_retry": "3"}, 400, "max_retry"),
    ({"type": "t", "queue": "emails", "timeout": 0}, 400, "timeout"),
    ({"type": "t", "queue": "emails", "unique": True}, 400, "unique"),
    ({"type": "t", "queue": "emails", "process_in": 5, "process_at": 5}, 400, "process_at"),
    ({"type": "t", "queue": "emails", "payload_base64": "***"}, 400, "base64"),
    ({"type": "t", "queue": "emails", "bogus": 1}, 400, "bogus"),
])
def test_enqueue_rejects_bad_requests(client, body, status, text):
    resp = client.post("/tasks", headers=C, json=body)
    assert resp.status_code == status and text in resp.json()["error"]


def test_enqueue_headers_reach_the_task_message(client, redis_url):
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "ada",
               "empty": "", "ünïcode": "välue"}
    resp = client.post("/tasks", headers=C, json={"type": "h", "queue": "emails", "task_id": "with-headers",
                                                  "headers": headers})
    assert resp.status_code == 201, resp.text
    # What asynq's Inspector.GetTaskInfo().Headers reads: the TaskMessage's headers map.
    with Inspector.from_url(redis_url) as inspector:
        assert inspector.get_task("emails", "with-headers").headers == headers
    # and what GET /tasks/{id} shows
    shown = client.get("/tasks/with-headers", headers=C, params={"queue": "emails"})
    assert shown.status_code == 200 and shown.json()["headers"] == headers
    batch = client.post("/tasks/batch", headers=C, json={"tasks": [
        {"type": "h", "queue": "emails", "task_id": "in-batch", "headers": {"k": "v"}},
        {"type": "h", "queue": "emails", "headers": {"k": 1}}]}).json()
    assert batch["enqueued"] == 1 and "headers['k'] must be a string" in batch["results"][1]["error"]
    with Inspector.from_url(redis_url) as inspector:
        assert inspector.get_task("emails", "in-batch").headers == {"k": "v"}


@pytest.mark.parametrize(("headers", "text"), [
    (["a", "b"], "headers must be an object of string keys and string values, got list"),
    ("k=v", "headers must be an object"),
    ({"k": 1}, "headers['k'] must be a string, got int"),
    ({"k": None}, "headers['k'] must be a string, got NoneType"),
    ({"k": {"nested": "x"}}, "headers['k'] must be a string, got dict"),
    ({"": "v"}, "a header name must not be empty"),
    ({f"h{i}": "v" for i in range(65)}, "headers has 65 entries, above the limit of 64"),
    ({"big": "x" * 16_400}, "headers holds 16,403 bytes of names and values, above the limit of 16,384"),
])
def test_enqueue_refuses_bad_headers_naming_the_field(client, producer, headers, text):
    resp = client.post("/tasks", headers=C, json={"type": "t", "queue": "emails", "headers": headers})
    assert resp.status_code == 400 and text in resp.json()["error"], resp.text
    assert producer.redis.llen(keys.pending("emails")) == 0


def test_enqueue_roles(client):
    body = {"type": "t", "queue": "emails"}
    assert client.post("/tasks", headers=W, json=body).status_code == 403
    assert client.post("/tasks", headers=A, json=body).status_code == 201
    assert client.post("/tasks", json=body).status_code == 401


def test_batch_enqueue(client, producer):
    resp = client.post("/tasks/batch", headers=C, json={"tasks": [
        {"type": "a", "queue": "emails", "payload": 1, "task_id": "b1"},
        {"type": "a", "queue": "nope"},
        "not an object",
        {"type": "a", "queue": "emails", "task_id": "b1"},
    ]})
    body = resp.json()
    assert resp.status_code == 200 and body["enqueued"] == 1 and body["failed"] == 3
    assert body["results"][0]["id"] == "b1"
    assert [r.get("status") for r in body["results"][1:]] == [404, 400, 409]
    assert producer.get_task("emails", "b1").state == "pending"
    assert client.post("/tasks/batch", headers=C, json={"tasks": []}).status_code == 400


# -- reading -------------------------------------------------------------------------------

def test_task_status_result_and_long_poll(client, redis_url):
    tid = client.post("/tasks", headers=C, json={"type": "t", "queue": "emails", "payload": {"n": 2},
                                                 "retention": 60}).json()["id"]
    view = client.get(f"/tasks/{tid}", headers=C).json()
    assert view["state"] == "pending" and view["payload"] == {"n": 2} and view["result"] is None
    assert client.get(f"/tasks/{tid}?queue=inference.low", headers=C).status_code == 404

    timer = threading.Timer(0.3, lambda: run(_complete_one(redis_url, "emails", b'{"sum": 4}')))
    timer.start()
    started = time.monotonic()
    done = client.get(f"/tasks/{tid}?wait=10", headers=C).json()
    timer.join()
    assert done["state"] == "completed" and done["result"] == {"sum": 4}
    assert 0.2 < time.monotonic() - started < 5
    assert client.get(f"/tasks/{tid}?wait=abc", headers=C).status_code == 400


def test_task_deleted_without_retention_and_text_results(client, redis_url):
    tid = client.post("/tasks", headers=C, json={"type": "t", "queue": "emails", "retention": 0}).json()["id"]
    timer = threading.Timer(0.2, lambda: run(_complete_one(redis_url, "emails")))
    timer.start()
    view = client.get(f"/tasks/{tid}?wait=10", headers=C).json()
    timer.join()
    assert view["state"] == "deleted"
    missing = client.get(f"/tasks/{tid}", headers=C)
    assert missing.status_code == 404 and "retention" in missing.json()["error"]

    tid = client.post("/tasks", headers=C, json={"type": "t", "queue": "emails"}).json()["id"]
    run(_complete_one(redis_url, "emails", b"plain text"))
    view = client.get(f"/tasks/{tid}", headers=C).json()
    assert view["result"] == "plain text" and view["result_encoding"] == "text"


def test_queue_stats_and_pause(client, redis_url):
    for i in range(3):
        client.post("/tasks", headers=C, json={"type": "t", "queue": "inference.high", "payload": i})
    client.post("/tasks", headers=C, json={"type": "t", "queue": "inference.high", "process_in": 600})
    run(_complete_one(redis_url, "inference.high", b"1"))
    stats = client.get("/queues/inference.high", headers=C).json()
    assert stats["pending"] == 2 and stats["scheduled"] == 1 and stats["completed"] == 1
    assert stats["processed_total"] == 1 and stats["weight"] == 6 and stats["parent"] == "inference"
    assert stats["size"] == 4 and stats["paused"] is False
    names = [q["queue"] for q in client.get("/queues", headers=C).json()["queues"]]
    assert set(names) >= {"inference.high", "inference.low", "inference.default", "emails"}
    assert client.get("/queues/nope", headers=C).status_code == 404

    assert client.post("/queues/inference.high/pause", headers=C).status_code == 403
    assert client.post("/queues/inference.high/pause", headers=A).json() == {"queue": "inference.high", "paused": True}
    assert client.get("/queues/inference.high", headers=C).json()["paused"] is True
    assert client.post("/queues/inference.high/unpause", headers=A).json()["paused"] is False


def test_openapi_describes_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    html = ("/", "/dashboard")  # the dashboard's pages (tests/test_dashboard*.py), not the JSON API
    routes = {r.path for r in client.app.routes if r.path not in html}
    assert routes == set(doc["paths"])
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["responses"], path
    assert doc["components"]["schemas"]["TaskRequest"]["required"] == ["type", "queue"]
    headers = doc["components"]["schemas"]["TaskRequest"]["properties"]["headers"]
    assert headers["type"] == "object" and headers["additionalProperties"] == {"type": "string"}


def test_body_limit(redis_url):
    settings = parse_queues(queues_doc(), redis_url=redis_url, max_body_bytes=2048)
    with TestClient(create_app(settings)) as c:
        big = {"type": "t", "queue": "emails", "payload": "x" * 5000}
        resp = c.post("/tasks", headers=C, json=big)
        assert resp.status_code == 413 and "2048" in resp.json()["error"]

        def chunks():  # no Content-Length: counted while streaming
            yield b'{"type": "t", "queue": "emails", "payload": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'
        resp = c.post("/tasks", headers=C, content=chunks())
        assert resp.status_code == 413
        assert c.post("/tasks", headers=C, json={"type": "t", "queue": "emails"}).status_code == 201


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "redis": "ok"}


def test_healthz_and_enqueue_without_redis():
    from agent.local_redis import free_port

    settings = parse_queues(queues_doc(), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 503
        resp = c.post("/tasks", headers=C, json={"type": "t", "queue": "emails"})
        assert resp.status_code == 503 and "Redis" in resp.json()["error"]


# -- the queues file -----------------------------------------------------------------------

def test_queues_file_reports_every_problem_with_its_path():
    doc = {
        "api_keys": [{"key": "short", "role": "worker"}, {"key": "k" * 20, "role": "root"}],
        "queues": {
            "bad.name": {"deployment": {"git_url": "x", "startup_cmd": "python w.py"}},
            "q": {"sub_queues": {"hi": 0}, "deployment": {"startup_cmd": "python 'w.py", "mode": "oneshot",
                                                          "vaults": ["missing"], "env_vars": {"1X": "a"}},
                  "task_defaults": {"timeout": "soon"}, "extra": 1},
        },
        "bogus": True,
    }
    with pytest.raises(QueuesFileError) as info:
        parse_queues(doc)
    text = str(info.value)
    for expected in ("bogus: unknown key", "api_keys[0].key", "api_keys[1].role", "queues.bad.name",
                     "queues.q.extra", "queues.q.sub_queues.hi", "queues.q.deployment.git_url: is required",
                     "queues.q.deployment.startup_cmd", "queues.q.deployment.mode",
                     "queues.q.deployment.vaults: unknown vault 'missing'", "queues.q.deployment.env_vars.1X",
                     "queues.q.task_defaults.timeout"):
        assert expected in text, expected


def test_queues_file_placeholders(tmp_path):
    path = tmp_path / "q.yml"
    path.write_text("api_keys:\n  - {name: w, key: '${WKEY}', role: worker}\n"
                    "queues:\n  q:\n    deployment: {git_url: '${URL:-https://h/r.git}', startup_cmd: python w.py}\n")
    settings = load_queues_file(path, environ={"WKEY": "w" * 20})
    assert settings.api_keys[0].key.reveal() == "w" * 20
    assert settings.queues["q"].deployment["git_url"] == "https://h/r.git"
    with pytest.raises(QueuesFileError, match="WKEY is not set"):
        load_queues_file(path, environ={})
    path.write_text("queues: [unclosed\n")
    with pytest.raises(QueuesFileError, match="not valid YAML"):
        load_queues_file(path)


def test_example_queues_file_runs_without_variables_and_warns_about_its_keys():
    settings = load_queues_file(QUEUES_FILE, environ={})
    assert settings.queues["demo"].sub_queues == {"demo.high": 3, "demo.low": 1}
    assert settings.queues["emails"].sub_queues == {"emails": 2}
    # Its deployments are the example tasks of the clone the file is in, as an absolute path.
    checkout = QUEUES_FILE.parent.parent.parent
    for queue in settings.queues.values():
        assert queue.deployment["git_url"] == str(checkout)
        assert (checkout / queue.deployment["code_path"] / "worker.py").is_file()
    assert [w.split(":")[0] for w in settings.warnings] == ["api_keys[0].key (agents, role worker)",
                                                           "api_keys[1].key (producers, role client)",
                                                           "api_keys[2].key (ops, role admin)"]
    assert "set RUNDOWN_WORKER_KEY" in settings.warnings[0]
    assert all("dev-" not in w for w in settings.warnings)  # the value itself is never repeated
    env = {"RUNDOWN_WORKER_KEY": "w" * 20, "RUNDOWN_CLIENT_KEY": "c" * 20, "RUNDOWN_ADMIN_KEY": "a" * 20}
    settings = load_queues_file(QUEUES_FILE, environ=env)
    assert settings.warnings == () and settings.api_keys[0].key.reveal() == "w" * 20


def _doc_with_git_url(url: str) -> dict:
    doc = queues_doc()
    doc["queues"]["emails"]["deployment"]["git_url"] = url
    return doc


@pytest.mark.parametrize("url", ["github.com/acme/emails.git", "not a url", "htps//github.com/a.git",
                                 "ftp://example.com/a.git", "https:///acme/a.git", "file://relative/a",
                                 "just-a-word", "https://[broken/a.git"])
def test_git_url_must_be_a_url_or_a_path(url):
    with pytest.raises(QueuesFileError) as info:
        parse_queues(_doc_with_git_url(url))
    assert "queues.emails.deployment.git_url: must be a git URL" in str(info.value)
    assert "queues.inference" not in str(info.value)


@pytest.mark.parametrize(("url", "sent"), [
    ("https://github.com/acme/emails.git", "https://github.com/acme/emails.git"),
    ("ssh://git@github.com/acme/emails.git", "ssh://git@github.com/acme/emails.git"),
    ("git@github.com:acme/emails.git", "git@github.com:acme/emails.git"),
    ("file:///srv/git/emails.git", "file:///srv/git/emails.git"),
    ("/srv/git/emails.git", "/srv/git/emails.git"),
    ("./repos/emails", "/etc/rundown/repos/emails"),
    ("../emails", "/etc/emails"),
    ("..", "/etc"),
])
def test_git_url_paths_are_relative_to_the_queues_file(url, sent):
    settings = parse_queues(_doc_with_git_url(url), base_dir=Path("/etc/rundown"))
    assert settings.queues["emails"].deployment["git_url"] == sent


def test_git_url_paths_are_absolute_when_the_queues_file_is_given_relatively(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "queues.yml").write_text(json.dumps(_doc_with_git_url("../repo")))
    monkeypatch.chdir(tmp_path)
    settings = load_queues_file("conf/queues.yml")
    assert settings.queues["emails"].deployment["git_url"] == str(tmp_path / "repo")


def test_check_rejects_a_git_url_that_is_not_a_url_or_path(tmp_path):
    doc = _doc_with_git_url("github.com/acme/emails.git")
    (tmp_path / "queues.yml").write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "agent.server.cli", "--queues", "queues.yml", "--check"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("queues.yml: 1 problem\n  queues.emails.deployment.git_url: must be a git URL")
    assert "Traceback" not in done.stderr


def test_parse_seconds():
    assert parse_seconds("1h30m") == 5400 and parse_seconds(90) == 90 and parse_seconds("250ms") == 0.25
    assert parse_seconds("soon") is None and parse_seconds(-1) is None and parse_seconds(True) is None


# -- the real server -----------------------------------------------------------------------

def test_real_uvicorn_server(settings, producer):
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.post("/worker/register", headers=W, json={"queue": "emails"}).status_code == 200
        resp = http.post("/tasks", headers=C, json={"type": "curl:task", "queue": "emails", "payload": [1, 2]})
        assert resp.status_code == 201
        tid = resp.json()["id"]
        assert producer.get_task("emails", tid).type == "curl:task"
        assert http.get(f"/tasks/{tid}", headers=C).json()["payload"] == [1, 2]


def test_cli_process(tmp_path, redis_url):
    path = tmp_path / "queues.yml"
    path.write_text(json.dumps(queues_doc()))  # JSON is YAML
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.server.cli", "--queues", str(path), "--listen", "127.0.0.1:0",
         "--redis", redis_url, "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parent.parent)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rundown-server listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        resp = httpx.post(f"{url}/worker/register", headers=W, json={"queue": "inference"}, timeout=10)
        assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    for secret in (WORKER_KEY, "ghp-secret-token", "hf-secret-value", "sk-vault-secret-value"):
        assert secret not in err
    assert "worker registered" in err


def test_cli_usage_errors_in_clicks_style(tmp_path):
    path = tmp_path / "queues.yml"
    path.write_text(json.dumps(queues_doc()))
    cases = [(["--listen", "nope"], "Error: Invalid value for '--listen'", "must be HOST:PORT, got 'nope'"),
             (["--max-body-bytes", "10"], "Error: Invalid value for '--max-body-bytes'", "1024"),
             (["--log-level", "loud"], "Error: Invalid value for '--log-level'", "'loud' is not one of"),
             (["--local-redis", "--redis", "redis://127.0.0.1:1/0"], "Error: give --redis", "not both"),
             (["--bogus"], "Error: No such option", "--bogus")]
    for args, error, detail in cases:
        done = subprocess.run([sys.executable, "-m", "agent.server.cli", "--queues", str(path), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("Usage: rundown-server [OPTIONS]"), done.stderr
        assert error in done.stderr and detail in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "agent.server.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--local-redis" in done.stdout and "RUNDOWN_SERVER_REDIS" in done.stdout
    done = subprocess.run([sys.executable, "-m", "agent.server.cli", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("rundown-server ")


def test_cli_local_redis_serves_and_is_stopped_with_the_server(tmp_path):
    path = tmp_path / "queues.yml"
    path.write_text(json.dumps(queues_doc()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.server.cli", "--queues", str(path), "--listen", "127.0.0.1:0",
         "--local-redis", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("rundown-server listening on "), line + proc.stderr.read()
        url = line.split()[-1]
        answer = httpx.post(f"{url}/worker/register", headers=W, json={"queue": "emails"}, timeout=10).json()
        redis_port = int(answer["redis"]["addr"].rsplit(":", 1)[1])
        resp = httpx.post(f"{url}/tasks", headers=C, json={"type": "t", "queue": "emails"}, timeout=10)
        assert resp.status_code == 201
        with Client(f"redis://127.0.0.1:{redis_port}/0") as local:
            assert local.get_task("emails", resp.json()["id"]).type == "t"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "throwaway Redis on redis://127.0.0.1:" in err
    with pytest.raises(OSError):  # its redis-server went with it
        import socket
        socket.create_connection(("127.0.0.1", redis_port), timeout=2).close()


def test_cli_bad_queues_file(tmp_path):
    path = tmp_path / "queues.yml"
    path.write_text("queues: {}\n")
    done = subprocess.run([sys.executable, "-m", "agent.server.cli", "--queues", str(path), "--check"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2
    assert "api_keys: is required" in done.stderr and "queues: is required" in done.stderr
