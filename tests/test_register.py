"""Registration against the real rundown-server (uvicorn + redis-server), and each error class
against small real HTTP servers (Starlette apps on uvicorn) and a closed port."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.bootstrap.errors import (
    BadResponseError,
    BootstrapError,
    KeyRejectedError,
    RegistrationError,
    ServerError,
    ServerUnreachableError,
    UnexpectedStatusError,
    UnknownQueueError,
)
from agent.bootstrap.register import backoff_delay, group_queues, parse_answer, register
from agent.config.model import (
    BootstrapConfig,
    Config,
    QueueSpec,
    RedisConfig,
    Secret,
    ServerConfig,
    WorkerConfig,
)
from agent.local_redis import free_port
from agent.server import ServerThread, create_app, parse_queues

WORKER_KEY = "worker-key-0123456789"
CLIENT_KEY = "client-key-0123456789"


def make_config(url: str, queues: list[str], key: str = WORKER_KEY, retries: int = 3,
                local_redis: RedisConfig | None = None) -> Config:
    return Config(server=ServerConfig(url=url, api_key=Secret(key)),
                  worker=WorkerConfig(queues=tuple(QueueSpec(q) for q in queues)),
                  bootstrap=BootstrapConfig(retries=retries, retry_delay=0.01), redis=local_redis)


def server_doc(advertise: str | None = None) -> dict:
    doc = {
        "api_keys": [{"name": "agents", "key": WORKER_KEY, "role": "worker"},
                     {"name": "producer", "key": CLIENT_KEY, "role": "client"}],
        "queues": {
            "inference": {
                "sub_queues": {"high": 6, "low": 1},
                "deployment": {"git_url": "https://git.example/acme/inference.git", "branch": "main",
                               "code_path": "workers", "startup_cmd": "python worker.py",
                               "mode": "one_shot", "startup_timeout_secs": 90, "processes": 2,
                               "env_vars": {"MODEL": "small"}, "secrets": {"HF_TOKEN": "hf-secret-value"},
                               "git_token": "ghp-secret-token-1"}},
            "emails": {"priority": 3, "deployment": {"git_url": "https://git.example/acme/emails.git",
                                                     "startup_cmd": "python -m emails"}},
        },
    }
    if advertise:
        doc["advertise_redis"] = advertise
    return doc


@pytest.fixture
def control_server(redis_url):
    with ServerThread(create_app(parse_queues(server_doc(), redis_url=redis_url))) as srv:
        yield srv


class Recorder:
    """A tiny real HTTP server answering /worker/register with scripted responses."""

    def __init__(self, *responses: Response) -> None:
        self.responses = list(responses)
        self.requests: list[dict] = []

    async def endpoint(self, request: Request) -> Response:
        self.requests.append({"headers": dict(request.headers), "body": await request.body()})
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]

    def __enter__(self) -> str:
        app = Starlette(routes=[Route("/worker/register", self.endpoint, methods=["POST"])])
        self.thread = ServerThread(app).start()
        return self.thread.url

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()


# -- against rundown-server ----------------------------------------------------------------

async def test_register_with_the_control_server(control_server, redis_url):
    config = make_config(control_server.url + "/", ["inference", "emails"])
    reg = await register(config, hostname="box-1")
    assert reg.queues == {"inference.high": 6, "inference.low": 1, "emails": 3}
    assert reg.redis.url == redis_url and reg.redis.kwargs == {}
    redis.Redis.from_url(reg.redis.url, **reg.redis.kwargs).ping()
    spec = reg.deployments["inference"]
    assert (spec.queue, spec.git_url, spec.branch, spec.code_path) == (
        "inference", "https://git.example/acme/inference.git", "main", "workers")
    assert spec.startup_argv == ("python", "worker.py") and spec.mode == "one_shot"
    assert spec.startup_timeout == 90 and spec.processes == 2 and spec.env_vars == {"MODEL": "small"}
    assert spec.secrets == {"HF_TOKEN": "hf-secret-value"} and spec.git_token.reveal() == "ghp-secret-token-1"
    assert "hf-secret-value" not in repr(spec) and "ghp-secret-token-1" not in repr(reg)
    emails = reg.deployments["emails"]
    assert emails.branch is None and emails.mode == "long_running" and emails.git_token is None
    assert reg.parents["inference"].sub_queues == {"inference.high": 6, "inference.low": 1}
    assert reg.warnings == ()


async def test_configured_sub_queues_only(control_server):
    config = make_config(control_server.url, ["inference.low", "inference.nope"])
    reg = await register(config)
    assert reg.queues == {"inference.low": 1}
    assert len(reg.warnings) == 1 and "inference.nope" in reg.warnings[0]
    assert list(reg.deployments) == ["inference"]


async def test_password_travels_in_kwargs_not_in_the_url(redis_url):
    host_port = redis_url.split("//")[1].split("/")[0]
    doc = server_doc(advertise=f"rediss://:p%40ss-word-123@{host_port}/2")
    ca = RedisConfig(tls_ca_file=Path("/etc/ssl/ca.pem"))
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as srv:
        reg = await register(make_config(srv.url, ["emails"], local_redis=ca))
    assert reg.redis.url == f"rediss://{host_port}/2"
    assert reg.redis.kwargs == {"password": "p@ss-word-123", "ssl_ca_certs": "/etc/ssl/ca.pem"}
    assert "p@ss-word-123" not in repr(reg.redis) and "p@ss-word-123" not in reg.redis.display_url


async def test_key_rejected_is_not_retried(control_server):
    for key, status in (("wrong-key-0123456789", 401), (CLIENT_KEY, 403)):
        with pytest.raises(KeyRejectedError) as info:
            await register(make_config(control_server.url, ["emails"], key=key))
        assert info.value.status == status
        assert key not in str(info.value) and "server.api_key" in str(info.value)


async def test_unknown_queue(control_server):
    with pytest.raises(UnknownQueueError, match="'video'") as info:
        await register(make_config(control_server.url, ["video"]))
    assert "\n" not in str(info.value)


# -- error classes against scripted servers ------------------------------------------------

async def test_retries_server_errors_then_succeeds():
    recorder = Recorder(PlainTextResponse("busy", 503), JSONResponse({"error": "db down"}, 500),
                        JSONResponse(server_doc_answer()))
    with recorder as url:
        reg = await register(make_config(url, ["inference"], retries=3))
    assert reg.queues == {"inference.high": 6} and len(recorder.requests) == 3


def server_doc_answer(**changes) -> dict:
    answer = {"redis": {"addr": "127.0.0.1:6379", "password": "", "db": 0, "use_tls": False},
              "queue": {"name": "inference", "priority": 6},
              "sub_queues": [{"name": "inference.high", "priority": 6}],
              "deployment": {"git_url": "https://h/r.git", "branch": "main", "startup_cmd": "python w.py"}}
    answer.update(changes)
    return answer


async def test_request_carries_bearer_key_and_runqy_body():
    recorder = Recorder(JSONResponse(server_doc_answer()))
    with recorder as url:
        await register(make_config(url, ["inference.high"]), hostname="box-9", version="9.9")
    (request,) = recorder.requests
    assert request["headers"]["authorization"] == f"Bearer {WORKER_KEY}"
    body = json.loads(request["body"])
    assert body["queue"] == "inference" and body["hostname"] == "box-9" and body["version"] == "9.9"
    assert body["os"]


async def test_server_error_after_all_attempts():
    recorder = Recorder(JSONResponse({"error": "database unavailable"}, 500))
    with recorder as url, pytest.raises(ServerError) as info:
        await register(make_config(url, ["emails"], retries=3))
    assert len(recorder.requests) == 3
    assert "HTTP 500 after 3 attempts" in str(info.value) and "database unavailable" in str(info.value)


@pytest.mark.parametrize(("response", "error", "count"), [
    (JSONResponse({"error": "bad"}, 401), KeyRejectedError, 1),
    (JSONResponse({"error": "nope"}, 403), KeyRejectedError, 1),
    (JSONResponse({"error": "no such queue"}, 404), UnknownQueueError, 1),
    (JSONResponse({"error": "huh"}, 400), UnexpectedStatusError, 1),
    (PlainTextResponse("slow down", 429, headers={"Retry-After": "0"}), ServerError, 2),
    (PlainTextResponse("<html>proxy error</html>", 200), BadResponseError, 1),
    (JSONResponse([1, 2], 200), BadResponseError, 1),
])
async def test_status_classes(response, error, count):
    recorder = Recorder(response)
    with recorder as url, pytest.raises(error) as info:
        await register(make_config(url, ["emails"], retries=2))
    assert len(recorder.requests) == count
    assert WORKER_KEY not in str(info.value)
    assert isinstance(info.value, RegistrationError) and isinstance(info.value, BootstrapError)


@pytest.mark.parametrize(("change", "field"), [
    ({"redis": None}, "redis"),
    ({"redis": {"password": "x"}}, "redis.addr"),
    ({"redis": {"addr": "nohostport"}}, "redis.addr"),
    ({"deployment": {"branch": "main", "startup_cmd": "python w.py"}}, "deployment.git_url"),
    ({"deployment": {"git_url": "https://h/r.git"}}, "deployment.startup_cmd"),
    ({"deployment": {"git_url": "https://h/r.git", "startup_cmd": "x", "mode": "oneshot"}}, "deployment.mode"),
    ({"deployment": {"git_url": "https://h/r.git", "startup_cmd": "x", "env_vars": ["A"]}}, "deployment.env_vars"),
    ({"sub_queues": [{"name": "inference.high", "priority": "high"}]}, "sub_queues[0].priority"),
    ({"sub_queues": [{"name": "other.high", "priority": 1}]}, "sub_queues[0].name"),
    ({"sub_queues": [{"name": "inference.\x1b[2Jhigh", "priority": 1}]}, "sub_queues[0].name"),
    ({"sub_queues": [{"name": "inference." + "x" * 300, "priority": 1}]}, "sub_queues[0].name"),
    ({"sub_queues": {"bell\x07": 1}}, "sub_queues.bell\x07"),
    ({"sub_queues": {f"s{i}": 1 for i in range(1001)}}, "sub_queues"),
    ({"vaults": {"API_KEY": {"nested": 1}}}, "vaults.API_KEY"),
])
async def test_bad_answer_names_the_field(change, field):
    answer = {k: v for k, v in server_doc_answer(**change).items() if v is not None}
    with Recorder(JSONResponse(answer)) as url, pytest.raises(BadResponseError) as info:
        await register(make_config(url, ["inference"]))
    assert info.value.field == field and repr(field) in str(info.value)


async def test_unreachable_after_attempts():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError) as info:
        await register(make_config(f"http://127.0.0.1:{port}", ["emails"], retries=3))
    assert info.value.attempts == 3 and "unreachable after 3 attempts" in str(info.value)
    assert "server.url" in str(info.value) and WORKER_KEY not in str(info.value)
    assert time.monotonic() - started < 5


async def test_config_problems_before_any_request():
    with pytest.raises(BootstrapError, match="server.url"):
        await register(make_config("", ["emails"]))
    with pytest.raises(BootstrapError, match="api_key"):
        await register(make_config("http://127.0.0.1:1", ["emails"], key=""))
    with pytest.raises(BootstrapError, match="worker.queues"):
        await register(make_config("http://127.0.0.1:1", []))
    with pytest.raises(RegistrationError, match="http:// or https://"):
        await register(make_config("ftp://example.com", ["emails"]))


# -- parsing runqy's shapes ----------------------------------------------------------------

def test_runqy_answer_with_tls_password_vaults_and_old_server_default_queue():
    answer = {
        "redis": {"addr": "redis.internal:6380", "password": "s3cr3t-pass", "use_tls": True, "db": 0},
        "queue": {"name": "inference", "priority": 10},
        "deployment": {"git_url": "https://github.com/acme/repo.git", "branch": "main",
                       "code_path": "workers/inference", "startup_cmd": "python main.py",
                       "mode": "long_running", "startup_timeout_secs": 0, "redis_storage": False,
                       "vaults": ["api-keys"]},
        "vaults": {"OPENAI_API_KEY": "sk-abc-123"},
        "git_token": "ghp_abcdef",
    }
    conn, queue = parse_answer(answer, "inference")
    assert conn.url == "rediss://redis.internal:6380/0" and conn.kwargs == {"password": "s3cr3t-pass"}
    assert queue.sub_queues == {"inference.default": 10}  # no sub_queues: runqy's old servers
    spec = queue.deployment
    assert spec.startup_timeout == 60 and spec.redis_storage is False
    assert spec.secrets == {"OPENAI_API_KEY": "sk-abc-123"} and spec.git_token.reveal() == "ghp_abcdef"


def test_short_sub_queue_names_url_form_and_non_positive_priorities():
    warnings: list[str] = []
    conn, queue = parse_answer(
        {"redis": "redis://user:pw-123456@h:6379/3",
         "sub_queues": {"high": 5, "inference.low": 1, "off": 0},
         "deployment": {"git_url": "g", "startup_cmd": "python w.py"}}, "inference", warnings=warnings)
    assert conn.url == "redis://h:6379/3" and conn.kwargs == {"password": "pw-123456", "username": "user"}
    assert queue.sub_queues == {"inference.high": 5, "inference.low": 1}
    assert len(warnings) == 1 and "inference.off" in warnings[0]


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
def test_a_priority_of_nan_or_infinity_is_an_error_naming_it(weight):
    """JSON's NaN and Infinity parse as floats: refused like any other non-integer."""
    with pytest.raises(BadResponseError) as info:
        parse_answer({"redis": "redis://h:6379/0", "sub_queues": {"high": weight},
                      "deployment": {"git_url": "g", "startup_cmd": "python w.py"}}, "inference")
    assert "sub_queues.high" in str(info.value) and "whole number" in str(info.value)


def test_group_queues():
    assert group_queues(["b.x", "a", "a.y", "b.z"]) == {"b": {"b.x", "b.z"}, "a": None}


def test_backoff_delay_grows_is_capped_and_jittered():
    assert backoff_delay(1, 1.0, rng=lambda: 0.0) == 0.5
    assert backoff_delay(1, 1.0, rng=lambda: 1.0) == 1.0
    assert backoff_delay(3, 1.0, rng=lambda: 1.0) == 4.0
    assert backoff_delay(20, 1.0, rng=lambda: 1.0) == 30.0
