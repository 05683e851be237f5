"""Security: secrets never leak from a real running system, and the ops plane is closed by default.

The end-to-end test runs everything for real: a password-protected redis-server, a git server
that wants a token (``git http-backend`` behind Basic auth), ``rundown-server`` handing out the
Redis password, the git token and a vault value, and ``rundown-agent`` in server mode with an
API key and an ops token, running tasks (one failing). Then it greps every secret in everything
an operator or another user could see: the agent's and the server's logs, every process's
command line (``ps``), the heartbeat and every other key in Redis, the ops endpoints, the error
messages, and every file of the deployment (``.git/config`` included).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import yaml

from agent.broker import keys
from agent.client import Client
from agent.config import DEFAULT_OPS_LISTEN, ConfigError, load_config
from agent.local_redis import LocalRedis, free_port
from agent.server.auth import authenticate
from agent.server.queues import ApiKey
from tests.agentproc import wait_until
from tests.test_deploy import GitHTTPServer, commit, git

ROOT = Path(__file__).resolve().parent.parent

WORKER_CODE = '''
import os
from task_sdk import task, run

@task("ok")
def ok(payload):
    return {"ok": True, "vault_delivered": bool(os.environ.get("VAULT_SECRET"))}

@task("slow")
def slow(payload):
    import time
    time.sleep(float(payload.get("seconds", 2)))
    return {"slept": True}

@task("fail")
def fail(payload):
    raise RuntimeError("failed on purpose")

if __name__ == "__main__":
    run()
'''


def _secret(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


class Leaks:
    """Collects (where, text) pairs and reports every secret found in any of them."""

    def __init__(self, secrets_: dict[str, str]) -> None:
        self.secrets = secrets_
        self.places: list[tuple[str, bytes]] = []

    def add(self, where: str, data: str | bytes) -> None:
        self.places.append((where, data.encode(errors="replace") if isinstance(data, str) else data))

    def found(self) -> list[str]:
        out = []
        for where, data in self.places:
            for name, value in self.secrets.items():
                if value.encode() in data:
                    out.append(f"{name} in {where}")
        return out


@pytest.fixture
def system(tmp_path):
    """Redis with a password, a token-protected git server, rundown-server, and the secrets."""
    s = {"redis_password": _secret("redispw"), "api_key": _secret("apikey"),
         "git_token": _secret("gittoken"), "vault_value": _secret("vaultval"),
         "ops_token": _secret("opstoken"), "client_key": _secret("clientkey")}
    redis_server = LocalRedis().start()
    with redis.Redis(port=redis_server.port) as admin:  # not in redis-server's argv either
        admin.config_set("requirepass", s["redis_password"])
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    commit(src, {"worker.py": WORKER_CODE}, "worker")
    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(src), str(served / "app.git"))
    git_server = GitHTTPServer(served, token=s["git_token"]).__enter__()
    queues = {
        "api_keys": [{"name": "agents", "key": "${T_WORKER_KEY}", "role": "worker"},
                     {"name": "producers", "key": "${T_CLIENT_KEY}", "role": "client"}],
        "vaults": {"app": {"VAULT_SECRET": "${T_VAULT_VALUE}"}},
        "queues": {"jobs": {"deployment": {
            "git_url": f"{git_server.url}/app.git", "branch": "main", "startup_cmd": "python worker.py",
            "vaults": ["app"], "git_token": "${T_GIT_TOKEN}"}}},
    }
    queues_file = tmp_path / "queues.yml"
    queues_file.write_text(yaml.safe_dump(queues))
    server_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "T_WORKER_KEY": s["api_key"],
           "T_CLIENT_KEY": s["client_key"], "T_VAULT_VALUE": s["vault_value"],
           "T_GIT_TOKEN": s["git_token"],
           # The Redis URL with its password travels in the environment, not in argv.
           "RUNDOWN_SERVER_REDIS": f"redis://:{s['redis_password']}@127.0.0.1:{redis_server.port}/0"}
    server_log = tmp_path / "server.log"
    with open(server_log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "agent.server.cli", "--queues", str(queues_file), "--listen",
             f"127.0.0.1:{server_port}", "--log-level", "debug", "--log-format", "json",
             "--access-log"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server_url = f"http://127.0.0.1:{server_port}"

    def server_up() -> bool:
        try:
            return httpx.get(f"{server_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(server_up, 20, what="rundown-server up")
    try:
        yield {"secrets": s, "redis": redis_server, "server_url": server_url, "server_log": server_log,
               "server": server, "tmp": tmp_path}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        git_server.__exit__()
        redis_server.stop()


def _agent_config(system, api_key_env: str = "T_AGENT_API_KEY") -> tuple[Path, int]:
    tmp = system["tmp"]
    ops_port = free_port()
    config = {
        "server": {"url": system["server_url"], "api_key": f"${{{api_key_env}}}"},
        "worker": {"queues": ["jobs"], "concurrency": 2, "shutdown_timeout": "5s"},
        "deployment": {"dir": str(tmp / "deployment")},
        "ops": {"listen": f"127.0.0.1:{ops_port}", "token": "${T_OPS_TOKEN}", "enable_controls": True},
        "logging": {"level": "debug", "format": "json"},
        "bootstrap": {"retries": 1, "retry_delay": "0.1s"},
    }
    path = tmp / "agent.yml"
    path.write_text(yaml.safe_dump(config))
    return path, ops_port


def _start_agent(system, config: Path, env_extra: dict, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "T_OPS_TOKEN": system["secrets"]["ops_token"], **env_extra}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _redis_contents(client: redis.Redis) -> bytes:
    """Every key and value in Redis, as one blob."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        parts.append(key)
        if kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            parts.extend(b for kv in client.hgetall(key).items() for b in kv)
        elif kind == "list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(client.smembers(key))
        elif kind == "zset":
            parts.extend(client.zrange(key, 0, -1))
    return b"\n".join(parts)


def _files_under(folder: Path, limit: int = 5 << 20):
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= limit:
            yield path


@pytest.mark.timeout(180)
def test_no_secret_leaks_from_a_running_system(system):
    s = system["secrets"]
    tmp = system["tmp"]
    config, ops_port = _agent_config(system)
    log = tmp / "agent.log"
    agent = _start_agent(system, config, {"T_AGENT_API_KEY": s["api_key"]}, log)
    ops = f"http://127.0.0.1:{ops_port}"
    auth = {"Authorization": f"Bearer {s['ops_token']}"}
    leaks = Leaks({k: v for k, v in s.items()})
    try:
        def ready() -> bool:
            if agent.poll() is not None:
                raise AssertionError(f"agent exited {agent.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{ops}/readyz", headers=auth, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, what="agent ready")
        # Tasks: through the control server's HTTP API and straight into Redis.
        resp = httpx.post(f"{system['server_url']}/tasks", timeout=10,
                          headers={"Authorization": f"Bearer {s['client_key']}"},
                          json={"type": "ok", "queue": "jobs", "payload": {}, "retention": 600})
        assert resp.status_code == 201, resp.text
        redis_url = f"redis://127.0.0.1:{system['redis'].port}/0"
        with Client(redis_url, password=s["redis_password"]) as client:
            ok = client.enqueue("ok", {}, queue="jobs", retention=600)
            failed = client.enqueue("fail", {}, queue="jobs", max_retry=0)
            slow = client.enqueue("slow", {"seconds": 3}, queue="jobs", retention=600)
            assert client.wait("jobs", ok.id, timeout=30).result_json()["vault_delivered"] is True
            assert client.wait("jobs", failed.id, timeout=30).state == "archived"
            wait_until(lambda: client.redis.llen(keys.active("jobs")) == 1, 10, what="slow task running")
            time.sleep(5.5)  # a heartbeat with the slow task in it
            leaks.add("redis (heartbeat, tasks, every key)", _redis_contents(client.redis))
            archived = client.get_task("jobs", failed.id)
            assert "failed on purpose" in archived.last_error
            leaks.add("task error message", archived.last_error)
            # The ops plane: every endpoint, with the token.
            for path in ("/status", "/metrics", "/healthz", "/readyz"):
                leaks.add(f"GET {path}", httpx.get(f"{ops}{path}", headers=auth, timeout=5).text)
            # Command lines of the agent and everything it started (ps).
            family = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
            for proc in family:
                leaks.add(f"argv of pid {proc.pid}", " ".join(proc.cmdline()))
            leaks.add("argv of rundown-server", " ".join(psutil.Process(system["server"].pid).cmdline()))
            # The child's environment: the vault value on purpose, never the agent's own secrets.
            children = [p for p in family[1:] if "worker.py" in " ".join(p.cmdline())]
            assert children, [p.cmdline() for p in family]
            for child in children:
                environ = Path(f"/proc/{child.pid}/environ").read_bytes()
                assert s["vault_value"].encode() in environ
                for name in ("api_key", "redis_password", "ops_token", "git_token"):
                    assert s[name].encode() not in environ, f"{name} in the child's environment"
            client.wait("jobs", slow.id, timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    # Every file of the deployment: the checkout's .git/config, FETCH_HEAD, caches, state files.
    deployment = tmp / "deployment"
    git_configs = [p for p in deployment.rglob("config") if p.parent.name.endswith(".git")
                   or (p.parent / "HEAD").exists()]
    assert git_configs, "no git repository found in the deployment"
    for path in _files_under(deployment):
        leaks.add(f"file {path.relative_to(tmp)}", path.read_bytes())
    leaks.add("agent log", log.read_bytes())
    leaks.add("rundown-server log", system["server_log"].read_bytes())
    assert b'"level":"debug"' in log.read_bytes()  # the noisiest log level was on
    assert leaks.found() == []


@pytest.mark.timeout(60)
def test_error_messages_do_not_show_secrets(system, tmp_path):
    s = system["secrets"]
    config, _ = _agent_config(system)
    # A key the server refuses: the error names the problem, not the key.
    wrong = _secret("wrongkey")
    log = tmp_path / "refused.log"
    agent = _start_agent(system, config, {"T_AGENT_API_KEY": wrong}, log)
    assert agent.wait(60) != 0
    text = log.read_text()
    assert "401" in text or "rejected" in text.lower() or "refused" in text.lower(), text[-2000:]
    for value in (wrong, *s.values()):
        assert value not in text
    # A config whose bad values hold secrets: the validation report masks them.
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({
        "redis": {"url": f"redis://:{s['redis_password']}@host:notaport/0"},
        "server": {"api_key": 12345},
        "worker": {"queues": ["q"]},
        "deployment": {"path": str(tmp_path), "startup_cmd": "python w.py"}}))
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-validate", "-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode != 0 and "redis.url" in out.stdout + out.stderr
    assert s["redis_password"] not in out.stdout + out.stderr
    with pytest.raises(ConfigError) as caught:
        load_config(bad, environ={})
    assert s["redis_password"] not in str(caught.value) + caught.value.report()


# -- the ops plane -------------------------------------------------------------------------

def test_ops_plane_is_loopback_by_default(tmp_path):
    assert DEFAULT_OPS_LISTEN.startswith("127.0.0.1:")
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"redis": {"url": "redis://127.0.0.1:6379/0"},
                                    "worker": {"queues": ["q"]},
                                    "deployment": {"path": str(tmp_path), "startup_cmd": "python w.py"}}))
    config = load_config(path, environ={})
    assert config.ops.host == "127.0.0.1" and config.ops.token is None
    assert config.ops.enable_controls is False
    # Controls on a non-loopback address without a token are refused.
    path.write_text(yaml.safe_dump({"redis": {"url": "redis://127.0.0.1:6379/0"},
                                    "worker": {"queues": ["q"]},
                                    "deployment": {"path": str(tmp_path), "startup_cmd": "python w.py"},
                                    "ops": {"listen": "0.0.0.0:9465", "enable_controls": True}}))
    with pytest.raises(ConfigError, match="ops.token"):
        load_config(path, environ={})


@pytest.mark.timeout(90)
def test_ops_endpoints_token_and_controls(tmp_path, redis_url):
    from tests.agentproc import AgentProcess, local_config

    # Token set, controls off.
    config, port = local_config(tmp_path, redis_url, ["default"])
    data = yaml.safe_load(config.read_text())
    data["ops"]["token"] = "ops-token-0123456789abcdef"
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, port, tmp_path / "a.log")
    agent._log = open(agent.log_path, "ab")  # noqa: SIM115 - closed by stop()
    agent.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(config)],
                                  stdout=agent._log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    good = {"Authorization": "Bearer ops-token-0123456789abcdef"}
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/readyz", headers=good, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, what="agent ready")
        for path in ("/healthz", "/readyz", "/metrics", "/status"):
            assert httpx.get(f"{base}{path}", timeout=2).status_code == 401
            assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer nope"}, timeout=2).status_code == 401
            assert httpx.get(f"{base}{path}", headers=good, timeout=2).status_code == 200
        # Lifecycle controls are off unless enabled: no such route.
        assert httpx.post(f"{base}/drain", headers=good, timeout=2).status_code in (404, 405)
        # Everything the agent listens on is loopback.
        listening = [c.laddr.ip for c in psutil.Process(agent.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(ip.startswith("127.") for ip in listening), listening
    finally:
        agent.stop()
    # Controls enabled (loopback, no token needed there): drain pauses, resume resumes.
    config2, port2 = local_config(tmp_path, redis_url, ["default"])
    data = yaml.safe_load(config2.read_text())
    data["ops"]["enable_controls"] = True
    config2.write_text(yaml.safe_dump(data))
    agent2 = AgentProcess(config2, port2, tmp_path / "b.log").start()
    try:
        base2 = f"http://127.0.0.1:{port2}"
        assert httpx.get(f"{base2}/drain", timeout=2).status_code == 405  # POST only
        assert httpx.post(f"{base2}/drain", timeout=2).json()["state"] == "paused"
        assert httpx.post(f"{base2}/resume", timeout=2).json()["state"] == "ready"
    finally:
        agent2.stop()


# -- the control server --------------------------------------------------------------------

def test_control_server_compares_every_key_in_constant_time(monkeypatch):
    from agent.config.model import Secret

    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("agent.server.auth.hmac.compare_digest", counting)
    api_keys = [ApiKey(f"k{i}", Secret(f"key-{i}-0123456789abcdef"), "client") for i in range(4)]
    assert authenticate(api_keys, "key-0-0123456789abcdef").name == "k0"
    assert len(calls) == 4  # no early exit on the first match
    calls.clear()
    assert authenticate(api_keys, "key-0-0123456789abcdeX") is None
    assert len(calls) == 4
    assert json.dumps([k.name for k in api_keys])  # names are fine to show; keys are Secrets
    assert "0123456789abcdef" not in repr(api_keys)
