"""``rundown-agent demo``: the whole system on one machine, with nothing to set up.

It starts a throwaway Redis, makes a git repository of the example task code shipped in the
package (``agent/examples/tasks``), serves it with the reference control server, starts a
real agent that registers, deploys the code into a virtualenv and supervises its children,
enqueues tasks over HTTP (as curl would), prints what happened to each, and stops
everything cleanly.

The demo works in one directory (default ``$XDG_CACHE_HOME/rundown-agent/demo``) that it
keeps: the agent's log and config stay readable after the run, and the agent's deployment
directory is reused, so a second run skips the virtualenv and the dependency install (the
deploy cache keys them by commit and requirements; the repository is committed with fixed
dates, so the same code gives the same commit). ``--fresh`` empties it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.examples import TASKS_DIR
from agent.local_redis import LocalRedis, free_port

__all__ = ["default_demo_dir", "run_demo"]

#: Commit dates of the demo's repository: fixed, so unchanged code keeps its commit.
_FIXED_DATE = "2000-01-01T00:00:00+00:00"
_UNFINISHED = ("pending", "active", "scheduled", "aggregating")


class DemoError(RuntimeError):
    """The demo cannot run or its agent did not come up (the message says why)."""


class DemoBusyError(DemoError):
    """Another demo holds the demo directory."""


def default_demo_dir() -> Path:
    """``$XDG_CACHE_HOME/rundown-agent/demo`` (``~/.cache/...`` when the variable is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rundown-agent" / "demo"


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _git_repo(workdir: Path) -> Path:
    repo = workdir / "tasks-repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(TASKS_DIR, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid",
           "GIT_AUTHOR_DATE": _FIXED_DATE, "GIT_COMMITTER_DATE": _FIXED_DATE}
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "example tasks"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


@contextlib.contextmanager
def _demo_dir(workdir: Path, fresh: bool) -> Iterator[Path]:
    """The demo's directory, held for this run (two demos would share its files)."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DemoBusyError(f"another demo is running in {workdir}; wait for it to finish or "
                                "give this one another directory with --dir") from None
        if fresh:
            for entry in workdir.iterdir():
                if entry.name != ".lock":
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        yield workdir
    finally:
        os.close(fd)  # closing releases the lock


def _queues_doc(repo: Path, worker_key: str, client_key: str) -> dict:
    return {
        "api_keys": [{"name": "agents", "key": worker_key, "role": "worker"},
                     {"name": "demo", "key": client_key, "role": "client"}],
        "queues": {"demo": {
            "sub_queues": {"high": 3, "low": 1},
            "deployment": {"git_url": repo.as_uri(), "branch": "main", "startup_cmd": "python worker.py",
                           "mode": "long_running", "startup_timeout_secs": 60,
                           "env_vars": {"GREETING": "hello"}},
            "task_defaults": {"max_retry": 2, "timeout": "1m", "retention": "1h"},
        }},
    }


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DemoError(f"the agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the agent was not ready after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _outcome(api: httpx.Client, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The task once it is no longer waiting to run: completed, archived, or failed and
    waiting for its retry (asynq's backoff is 15-44 s: the demo shows that state instead)."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/tasks/{task_id}", params={"wait": 0.5}).raise_for_status().json()
        if view["state"] not in _UNFINISHED or time.monotonic() >= deadline:
            return view


def run_demo(workdir: Path | None = None, *, fresh: bool = False) -> int:
    """Run the demo in ``workdir`` (default :func:`default_demo_dir`); the exit code."""
    workdir = (workdir or default_demo_dir()).expanduser().absolute()
    try:
        with _demo_dir(workdir, fresh):
            return _run(workdir)
    except DemoError as exc:
        print(f"rundown-agent demo: {exc}", file=sys.stderr)
        return 1


def _run(workdir: Path) -> int:
    from agent.server import ServerThread, create_app, parse_queues

    worker_key, client_key = secrets.token_hex(16), secrets.token_hex(16)
    log_path = workdir / "agent.log"
    redis = server = agent = None
    try:
        redis = LocalRedis().start()
        _say(f"Redis {redis.binary} on {redis.url}")
        repo = _git_repo(workdir)
        _say(f"task code: {repo}, a git repository of the example tasks (agent/examples/tasks)")
        settings = parse_queues(_queues_doc(repo, worker_key, client_key), redis_url=redis.url)
        server = ServerThread(create_app(settings)).start()
        _say(f"control server (rundown-server) on {server.url}")

        ops_port = free_port()
        config = {
            "server": {"url": server.url, "api_key": "${DEMO_WORKER_KEY}"},
            "worker": {"queues": ["demo"], "concurrency": 2, "shutdown_timeout": "5s"},
            "deployment": {"dir": str(workdir / "deployments")},
            "ops": {"listen": f"127.0.0.1:{ops_port}"},
            "logging": {"level": "info", "format": "human"},
        }
        config_path = workdir / "agent.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        _say(f"starting: rundown-agent -config {config_path}  (log: {log_path})")
        env = {**os.environ, "DEMO_WORKER_KEY": worker_key, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        _wait_ready(ops_port, agent, log_path)
        deployed = ("virtualenv reused: nothing to install"
                    if "virtualenv reused" in log_path.read_text(errors="replace")
                    else "virtualenv + install")
        _say(f"agent registered, deployed ({deployed}) and ready in "
             f"{time.monotonic() - started:.1f}s; ops endpoints on http://127.0.0.1:{ops_port}")

        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {client_key}"}, timeout=30)
        tasks = [
            {"type": "greet", "payload": {"name": "Ada"}, "queue": "demo.high"},
            {"type": "hash", "payload": {"text": "rundown"}, "queue": "demo.low"},
            {"type": "flaky", "payload": {"fail_times": 1}, "queue": "demo.high", "max_retry": 2},
            {"type": "reject", "payload": {"error": "bad input: never retried"}, "queue": "demo.low"},
            {"type": "anything:else", "payload": {"x": 1}, "queue": "demo.low"},
            {"type": "greet", "payload": {"name": "later"}, "queue": "demo.high", "process_in": 2},
        ]
        _say("enqueuing over HTTP (POST /tasks, as curl would):")
        ids = []
        for body in tasks:
            answer = api.post("/tasks", json=body).raise_for_status().json()
            ids.append(answer["id"])
            print(f"    {body['type']:<14} -> {answer['queue']:<10} {answer['state']:<10} id {answer['id']}")
        _say("results (GET /tasks/{id}?wait=...):")
        for task_id in ids:
            view = _outcome(api, task_id)
            outcome = view.get("result") if view["state"] == "completed" else view.get("last_error")
            extra = f" (next try at {time.strftime('%H:%M:%S', time.localtime(view['next_process_at']))})" \
                if view["state"] == "retry" else ""
            print(f"    {view['type']:<14} {view['state']:<10} retried {view['retried']}  "
                  f"{json.dumps(outcome)}{extra}")
        status = httpx.get(f"http://127.0.0.1:{ops_port}/status", timeout=5).json()
        children = [c for e in status["executors"].values() for c in e["children"]]
        _say(f"agent status: {status['state']}, {len(children)} child processes "
             f"(pids {', '.join(str(c['pid']) for c in children)})")
        _say("queues (GET /queues):")
        for q in api.get("/queues").json()["queues"]:
            print(f"    {q['queue']:<10} weight {q['weight']}  pending {q['pending']}  active {q['active']}  "
                  f"retry {q['retry']}  archived {q['archived']}  completed {q['completed']}  "
                  f"processed {q['processed_total']}  failed {q['failed_total']}")
        _say("stopping the agent with SIGTERM (it drains, requeues nothing left, clears its heartbeat)")
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        _say(f"agent exited with code {code}")
        return 0 if code == 0 else 1
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if server is not None:
            server.stop()
        if redis is not None:
            redis.stop()
        if agent is not None:
            _say(f"the agent's log stays in {log_path} (until the next demo run; the deployment "
                 f"in {workdir / 'deployments'} is reused then)")
