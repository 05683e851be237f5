"""Redis rejecting the agent's credentials: a real password-protected redis-server, a real
control server handing out a wrong (then a rotated) password, and real agent processes.

A rejected login is not an outage: readiness says why at once, the log gets one line per
back-off step, new credentials from the control server are used, the same ones again make
the agent exit with code 3, and the password appears nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from agent.client import Client
from agent.local_redis import LocalRedis, free_port
from agent.server import ServerThread, create_app, parse_queues
from tests.agentproc import APPS, local_config, spawn_agent, wait_until

RIGHT = "right-password-5f0c9a1e"
WRONG = "wrong-password-77d2b6c4"
WORKER_KEY = "worker-key-auth-0123456789"
EXIT_AUTH = 3
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


@pytest.fixture
def locked_redis():
    """A redis-server that wants the password RIGHT (set after start: never in its argv)."""
    server = LocalRedis().start()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", RIGHT)
    yield server
    server.stop()


def redis_url(server: LocalRedis, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository of the end-to-end test app, for the control server to hand out."""
    repo = tmp_path / "repo"
    shutil.copytree(APPS, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for args in (("init", "-q", "-b", "main"), ("add", "."), ("commit", "-q", "-m", "app")):
        subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                       capture_output=True)
    return repo


def control_app(server: LocalRedis, repo: Path, advertised_password: str):
    """The reference control server: its own Redis login is right, the one it hands out is
    ``advertised_password``."""
    doc = {
        "api_keys": [{"name": "agents", "key": WORKER_KEY, "role": "worker"}],
        "advertise_redis": redis_url(server, advertised_password),
        "queues": {"jobs": {"deployment": {"git_url": repo.as_uri(), "branch": "main",
                                           "startup_cmd": "python e2e_worker.py"}}},
    }
    return create_app(parse_queues(doc, redis_url=redis_url(server, RIGHT)))


def server_config(tmp_path: Path, url: str, attempts: int) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump({
        "server": {"url": url, "api_key": WORKER_KEY, "redis_auth_attempts": attempts},
        "worker": {"queues": ["jobs"], "concurrency": 2, "shutdown_timeout": "3s"},
        "bootstrap": {"retries": 1, "retry_delay": "0.1s"},
        "deployment": {"dir": str(tmp_path / "deployments")},
        "ops": {"listen": f"127.0.0.1:{port}"},
        "logging": {"level": "info", "format": "json"},
    }))
    return path, port


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2.0)
    except httpx.HTTPError:
        return None


def rejection_reason(port: int) -> str | None:
    """The readiness reason that names the rejected credentials, once /readyz gives one."""
    answer = get(port, "/readyz")
    if answer is None or answer.status_code != 503:
        return None
    return next((r for r in answer.json()["reasons"] if "rejected the credentials" in r), None)


def log_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "raw", "msg": line})
    return records


# -- the pieces, against a real redis-server -----------------------------------------------

async def test_rotating_credentials_apply_to_the_next_connection(locked_redis):
    from agent.broker.credentials import RotatingCredentials, auth_reason, is_auth_error

    credentials = RotatingCredentials(password=WRONG)
    client = aioredis.Redis.from_url(redis_url(locked_redis, None), credential_provider=credentials)
    sync = redis.Redis.from_url(redis_url(locked_redis, None), credential_provider=credentials)
    try:
        with pytest.raises(redis.RedisError) as rejected:
            await client.ping()
        assert is_auth_error(rejected.value)
        reason = auth_reason(rejected.value)
        assert reason.startswith("AuthenticationError:") and WRONG not in reason
        assert WRONG not in repr(credentials) and not credentials.matches(None, RIGHT)
        credentials.replace(None, RIGHT)
        assert credentials.matches(None, RIGHT)
        assert await client.ping() and sync.ping()
        assert not is_auth_error(redis.ConnectionError("Connection refused"))
    finally:
        await client.aclose()
        sync.close()


def _gate(attempts: int, answers: list):
    """A server-mode RedisAuth whose registrations return ``answers`` in turn, waiting no time."""
    from agent.bootstrap.models import RedisConnection
    from agent.config.model import Secret
    from agent.runtime.redis_auth import RedisAuth

    asked: list[int] = []

    async def register_again() -> RedisConnection:
        asked.append(1)
        url, password = answers.pop(0)
        return RedisConnection(url=url, password=Secret(password))

    first = RedisConnection(url="redis://10.0.0.5:6379/0", password=Secret(WRONG))
    return RedisAuth.from_server(first, "http://control.example", register_again, attempts), asked


async def no_wait(seconds: float) -> bool:
    assert 0 < seconds <= 60
    return False


async def test_same_credentials_give_up_after_the_attempts_new_ones_start_over():
    from agent.runtime.redis_auth import RedisAuthRejected

    rejected = redis.AuthenticationError("invalid username-password pair or user is disabled.")
    url = "redis://10.0.0.5:6379/0"
    auth, asked = _gate(2, [(url, "rotated-password-1"), (url, "rotated-password-1")])
    kwargs = auth.client_kwargs({"password": WRONG, "ssl_ca_certs": "ca.pem"})
    assert kwargs == {"ssl_ca_certs": "ca.pem", "credential_provider": auth.credentials}
    assert await auth.rejected(rejected, no_wait)  # new credentials: tried, a new count
    assert auth.credentials.matches(None, "rotated-password-1") and auth.rejections == 0
    assert "rejected the credentials" in auth.problem and WRONG not in auth.problem
    assert await auth.rejected(rejected, no_wait)  # the same again: rejection 1 of 2
    with pytest.raises(RedisAuthRejected, match="same credentials") as info:
        await auth.rejected(rejected, no_wait)
    assert info.value.exit_code == EXIT_AUTH and len(asked) == 2
    assert "server.redis_auth_attempts" in str(info.value) and "rotated-password-1" not in str(info.value)
    auth.accepted()
    assert auth.problem is None


async def test_one_attempt_another_redis_and_a_stop_while_waiting():
    from agent.runtime.redis_auth import RedisAuthRejected

    rejected = redis.AuthenticationError("Authentication required.")
    auth, asked = _gate(1, [])
    with pytest.raises(RedisAuthRejected):
        await auth.rejected(rejected, no_wait)
    assert asked == []  # 1: no second registration
    auth, _ = _gate(0, [("redis://10.0.0.6:6379/0", WRONG)])
    with pytest.raises(RedisAuthRejected, match="another Redis .*10.0.0.6"):
        await auth.rejected(rejected, no_wait)

    async def stopped(seconds: float) -> bool:
        return True

    auth, asked = _gate(0, [])
    assert await auth.rejected(rejected, stopped) is False and asked == []


def test_redis_auth_attempts_is_validated(tmp_path):
    from agent.config import ConfigError, load_config

    path = tmp_path / "agent.yml"
    for value, expected in ((0, 0), (5, 5), (None, 2)):
        server = {"url": "http://127.0.0.1:1", "api_key": WORKER_KEY, "redis_auth_attempts": value}
        path.write_text(yaml.safe_dump({"server": server, "worker": {"queues": ["jobs"]}}))
        assert load_config(path, environ={}).server.redis_auth_attempts == expected
    for bad in (-1, "twice", 1.5):
        server = {"url": "http://127.0.0.1:1", "api_key": WORKER_KEY, "redis_auth_attempts": bad}
        path.write_text(yaml.safe_dump({"server": server, "worker": {"queues": ["jobs"]}}))
        with pytest.raises(ConfigError, match="server.redis_auth_attempts"):
            load_config(path, environ={})


# -- server mode ---------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_wrong_password_from_the_control_server_fails_readiness_then_exits(tmp_path, locked_redis, repo):
    with ServerThread(control_app(locked_redis, repo, WRONG)) as control:
        config, port = server_config(tmp_path, control.url, attempts=3)
        log = tmp_path / "agent.log"
        began = time.monotonic()
        agent = spawn_agent(config, port, log)
        try:
            reason = wait_until(lambda: rejection_reason(port), 30, what="readiness names the rejection")
            shown = time.monotonic() - began
            assert "AuthenticationError" in reason and "control server" in reason, reason
            status = get(port, "/status")
            assert status is not None and "rejected the credentials" in status.json()["redis"]["auth_error"]
            code = agent.wait(60)
        finally:
            if agent.proc.poll() is None:
                agent.kill()
        total = time.monotonic() - began
    print(f"\nrejection on /readyz {shown:.2f}s after spawn; exit {code} after {total:.2f}s")
    output = log.read_text(errors="replace")
    assert code == EXIT_AUTH, output
    records = log_records(log)
    steps = [r for r in records if "registering again in" in r.get("msg", "")]
    assert len(steps) == 2, output  # attempts 3: two waits, then the exit
    final = [r for r in records if r.get("msg", "").startswith("giving up")]
    assert len(final) == 1 and "server.redis_auth_attempts" in final[0]["msg"], output
    assert "same credentials" in final[0]["msg"] and "exit code 3" in final[0]["msg"]
    assert len([r for r in records if r.get("level") in ("warning", "error")]) <= 4, output
    assert len(records) < 40, output
    for text in (output, reason, status.text):
        assert WRONG not in text and RIGHT not in text


@pytest.mark.timeout(90)
def test_rotated_password_from_the_control_server_is_used(tmp_path, locked_redis, repo):
    app = control_app(locked_redis, repo, WRONG)
    with ServerThread(app) as control:
        config, port = server_config(tmp_path, control.url, attempts=0)  # never give up
        log = tmp_path / "agent.log"
        agent = spawn_agent(config, port, log)
        try:
            wait_until(lambda: rejection_reason(port), 30, what="readiness names the rejection")
            # the operator fixes the control server: it now hands out the right password
            settings = app.state.settings
            app.state.settings = replace(settings, advertise_redis=redis_url(locked_redis, RIGHT))
            agent.wait_ready(30)
            with Client(redis_url(locked_redis, RIGHT)) as client:
                info = client.enqueue("stamp", {"n": 1}, queue="jobs", retention=60)
                done = client.wait(info.queue, info.id, timeout=20)
            assert done.state == "completed", done
            status = get(port, "/status")
            assert status is not None and status.json()["redis"]["auth_error"] is None
            assert agent.stop(30) == 0
        finally:
            if agent.proc.poll() is None:
                agent.kill()
    output = log.read_text(errors="replace")
    assert "handed out new Redis credentials" in output, output
    assert "redis.retry.Retry" not in output  # redis-py's warning about a sync Retry object
    assert WRONG not in output and RIGHT not in output


# -- local mode: the config cannot change, so the first rejection is final ----------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("where, key", [
    ("url", "the password in redis.url"),
    ("password", "redis.password"),
    ("none", "set redis.password"),
])
def test_local_mode_exits_at_once_naming_the_key(tmp_path, locked_redis, where, key):
    config, port = local_config(tmp_path, redis_url(locked_redis, WRONG if where == "url" else None),
                                ["default"])
    if where == "password":
        data = yaml.safe_load(config.read_text())
        data["redis"]["password"] = WRONG
        config.write_text(yaml.safe_dump(data))
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, port, log)
    try:
        code = agent.wait(30)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    output = log.read_text(errors="replace")
    assert code == EXIT_AUTH, output
    final = [r for r in log_records(log) if r.get("msg", "").startswith("giving up")]
    assert len(final) == 1 and key in final[0]["msg"], output
    assert "Redis not reachable" not in output  # not mistaken for an outage
    assert WRONG not in output and RIGHT not in output


@pytest.mark.timeout(60)
def test_acl_user_without_rights_is_an_auth_failure(tmp_path, locked_redis):
    with redis.Redis(port=locked_redis.port, password=RIGHT) as admin:
        admin.execute_command("ACL", "SETUSER", "reader", "on", f">{WRONG}", "~*", "-@all", "+auth",
                              "+hello", "+client")
    url = f"redis://reader:{WRONG}@127.0.0.1:{locked_redis.port}/0"
    config, port = local_config(tmp_path, url, ["default"])
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, port, log)
    try:
        code = agent.wait(30)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    output = log.read_text(errors="replace")
    assert code == EXIT_AUTH, output
    assert "NoPermissionError" in output and "the password in redis.url" in output
    assert WRONG not in output
