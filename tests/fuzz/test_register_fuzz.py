"""Control-server answers: any JSON (or not JSON), any status, gives a Registration or a
BootstrapError naming the problem, never another exception."""

from __future__ import annotations

import asyncio
import json

import httpx
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.bootstrap.errors import BootstrapError
from agent.bootstrap.models import Registration
from agent.bootstrap.register import parse_answer, register
from agent.config import load_config
from tests.fuzz.settings import bounded

FIELDS = ["redis", "addr", "url", "password", "db", "use_tls", "username", "queue", "name", "priority",
          "sub_queues", "deployment", "git_url", "branch", "commit", "code_path", "startup_cmd", "mode",
          "startup_timeout_secs", "env_vars", "processes", "requirements", "redis_storage", "vaults",
          "secrets", "git_token"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
           | st.sampled_from(["redis://h:6379/0", "rediss://u:p@h:1/2", "unix:///s.sock", "h:6379",
                              "https://git.example/x.git", "python w.py", "long_running", "one_shot",
                              "jobs", "jobs.high", "high", "", " ", "0", "1e3", "-5", "abc123"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5),
                      max_leaves=20)
answers = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)


def _good_answer() -> dict:
    return {"redis": {"addr": "127.0.0.1:6379", "password": "pw-0123456789"},
            "sub_queues": [{"name": "jobs.high", "priority": 3}],
            "deployment": {"git_url": "https://git.example/x.git", "startup_cmd": "python w.py"}}


@bounded(400)
@given(answers)
def test_parse_answer_gives_a_registration_or_a_bad_response(data):
    try:
        redis, queue = parse_answer(data, "jobs", "http://server/worker/register", warnings=[])
    except BootstrapError as exc:
        assert str(exc)
        return
    assert redis.url and queue.parent == "jobs"


@bounded(200)
@given(st.dictionaries(st.sampled_from(["redis", "sub_queues", "deployment", "vaults", "git_token"]),
                       values, max_size=3))
def test_mutations_of_a_good_answer(changes):
    data = {**_good_answer(), **changes}
    try:
        parse_answer(data, "jobs", "http://server/worker/register", warnings=[])
    except BootstrapError as exc:
        assert str(exc)


bodies = st.one_of(answers.map(json.dumps), values.map(json.dumps), st.binary(max_size=200),
                   st.just(json.dumps(_good_answer())))


@bounded(150)
@given(status=st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 408, 413, 429, 500, 503]),
       body=bodies, content_type=st.sampled_from(["application/json", "text/html", ""]))
def test_register_over_http_gives_a_registration_or_a_bootstrap_error(tmp_path_factory, status, body,
                                                                      content_type):
    folder = tmp_path_factory.mktemp("reg")
    path = folder / "agent.yml"
    path.write_text(yaml.safe_dump({"server": {"url": "http://control.test", "api_key": "k" * 20},
                                    "worker": {"queues": ["jobs"]},
                                    "bootstrap": {"retries": 2, "retry_delay": "0s"}}))
    config = load_config(path, environ={})
    content = body if isinstance(body, bytes) else body.encode()

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return httpx.Response(status, content=content, headers=headers)

    async def no_sleep(_seconds: float) -> None:
        return None

    try:
        result = asyncio.run(register(config, transport=httpx.MockTransport(answer), sleep=no_sleep,
                                      hostname="fuzz"))
    except BootstrapError as exc:
        assert str(exc) and "k" * 20 not in str(exc)
        return
    assert isinstance(result, Registration) and result.queues
