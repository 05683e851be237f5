"""End to end in server mode: rundown-server + a real git repo + a real agent process.

Tasks are enqueued with the real ``curl`` binary, as any language's producer would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from agent.examples import TASKS_DIR
from agent.local_redis import free_port
from agent.server import ServerThread, create_app, parse_queues

EXAMPLE = TASKS_DIR
WORKER_KEY = "worker-key-0123456789abcdef"
CLIENT_KEY = "client-key-0123456789abcdef"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


@pytest.fixture
def control(redis_url, repo):
    doc = {
        "api_keys": [{"name": "agents", "key": WORKER_KEY, "role": "worker"},
                     {"name": "producers", "key": CLIENT_KEY, "role": "client"}],
        "queues": {"jobs": {"deployment": {"git_url": repo.as_uri(), "branch": "main",
                                           "startup_cmd": "python worker.py"},
                            "task_defaults": {"retention": "1h"}}},
    }
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as server:
        yield server


def agent_config(tmp_path: Path, url: str, key: str = WORKER_KEY, retries: int = 3) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump({
        "server": {"url": url, "api_key": key},
        "worker": {"queues": ["jobs"], "concurrency": 4},
        "bootstrap": {"retries": retries, "retry_delay": "0.1s"},
        "deployment": {"dir": str(tmp_path / "deployments")},
        "ops": {"listen": f"127.0.0.1:{port}"},
        "logging": {"format": "json"},
    }))
    return path, port


def start(config: Path, port: int, log: Path, timeout: float = 120) -> tuple[subprocess.Popen, float]:
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    while time.monotonic() - began < timeout:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"not ready:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    assert proc.wait(30) == 0


def curl(*args: str) -> dict:
    out = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {CLIENT_KEY}", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


def deploy_lines(log: Path) -> list[dict]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("msg", "").startswith("deployed ")]


def test_bootstrap_deploy_curl_restart_and_redeploy(tmp_path, control, repo):
    config, port = agent_config(tmp_path, control.url)
    log = tmp_path / "agent.log"
    proc = None
    try:
        proc, cold = start(config, port, log)
        task = curl("-d", json.dumps({"type": "greet", "payload": {"name": "curl"}, "queue": "jobs"}),
                    f"{control.url}/tasks")
        done = curl(f"{control.url}/tasks/{task['id']}?wait=20")
        assert done["state"] == "completed" and done["result"]["message"] == "hello, curl!"
        stop(proc)

        proc, warm = start(config, port, log)  # nothing changed: no clone, no install
        print(f"\ncold start to ready {cold:.2f}s, warm restart to ready {warm:.2f}s")
        # The deploy work itself, not the start-up's wall clock (which a loaded machine
        # stretches past any bound): no virtualenv, no install, a fetch that found nothing.
        warm_deploy = deploy_lines(log)[-1]
        assert warm_deploy["installed"] is False, warm_deploy
        assert "venv" not in warm_deploy["timings"] and "install" not in warm_deploy["timings"], warm_deploy
        assert warm_deploy["timings"]["total"] < 1.0, warm_deploy
        stop(proc)

        worker = repo / "worker.py"
        worker.write_text(worker.read_text().replace('"hello"', '"bonjour"'))
        git(repo, "commit", "-qam", "second")
        proc, _ = start(config, port, log)
        task = curl("-d", json.dumps({"type": "greet", "payload": {"name": "curl"}, "queue": "jobs"}),
                    f"{control.url}/tasks")
        assert curl(f"{control.url}/tasks/{task['id']}?wait=20")["result"]["message"] == "bonjour, curl!"
        stop(proc)
        assert git(repo, "rev-parse", "--short=12", "HEAD") in log.read_text()
    finally:
        if proc is not None and proc.poll() is None:  # a failed step: no agent left running
            proc.kill()
            proc.wait()


def run_failing(config: Path, timeout: float = 60) -> tuple[int, str]:
    run = subprocess.run([sys.executable, "-m", "agent.cli", "-config", str(config)],
                         capture_output=True, text=True, timeout=timeout)
    return run.returncode, run.stdout + run.stderr


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if '"level":"error"' in line]


@pytest.mark.parametrize("case", ["wrong key", "wrong url", "bad branch"])
def test_bootstrap_failures_are_one_secret_free_line(tmp_path, redis_url, repo, case):
    secret_key = "s3cr3t-key-that-must-not-leak-0001"
    branch = "no-such-branch" if case == "bad branch" else "main"
    doc = {"api_keys": [{"name": "agents", "key": WORKER_KEY if case != "bad branch" else secret_key,
                         "role": "worker"}],
           "queues": {"jobs": {"deployment": {"git_url": repo.as_uri(), "branch": branch,
                                              "startup_cmd": "python worker.py"}}}}
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as server:
        url = f"http://127.0.0.1:{free_port()}" if case == "wrong url" else server.url
        config, _ = agent_config(tmp_path, url, key=secret_key, retries=2)
        code, output = run_failing(config)
    assert code != 0
    errors = error_lines(output)
    assert len(errors) == 1, output
    message = json.loads(errors[0])["msg"]
    assert "\n" not in message and secret_key not in output
    expected = {"wrong key": "rejected", "wrong url": "unreachable", "bad branch": "no-such-branch"}[case]
    assert expected in message.lower(), message
