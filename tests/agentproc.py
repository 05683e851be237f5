"""Run ``rundown-agent`` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from agent.local_redis import free_port

APPS = Path(__file__).parent / "apps"


def local_config(tmp: Path, redis_url: str, queues, *, concurrency: int = 10, strict: bool = False,
                 startup_cmd: str = "python e2e_worker.py", app_dir: Path = APPS, extra_env=None,
                 shutdown_timeout: str = "5s", processes: int | str = 1, worker=None,
                 **deployment) -> tuple[Path, int]:
    """A local-mode config file; ``worker`` and ``deployment`` keys go into their sections
    as given (over the defaults here)."""
    port = free_port()
    config = {
        "redis": {"url": redis_url},
        "worker": {"queues": queues, "concurrency": concurrency, "strict_priority": strict,
                   "shutdown_timeout": shutdown_timeout, **(worker or {})},
        "deployment": {"dir": str(tmp / "deployment"), "path": str(app_dir), "startup_cmd": startup_cmd,
                       "venv": "none", "processes": processes, "env_vars": extra_env or {},
                       **deployment},
        "ops": {"listen": f"127.0.0.1:{port}"},
        "logging": {"level": "info", "format": "json"},
    }
    path = tmp / f"agent-{port}.yml"
    path.write_text(yaml.safe_dump(config))
    return path, port



def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something true, and return that; AssertionError
    after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not met within {timeout}s")
        time.sleep(interval)

class AgentProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> AgentProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2.0)

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready after {timeout}s:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn_agent(config: Path, port: int, log: Path) -> AgentProcess:
    """Start ``rundown-agent -config`` like ``AgentProcess.start`` but without waiting for it
    to be ready (to signal it while it starts, or to watch its start-up)."""
    agent = AgentProcess(config, port, log)
    agent._log = open(log, "ab")  # noqa: SIM115 - closed in wait() / kill()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    agent.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-config", str(config)],
                                  stdout=agent._log, stderr=subprocess.STDOUT, env=env)
    return agent


def processes_marked(name: str, value: str) -> list:
    """Live processes (zombies excluded) whose environment holds ``name=value``: give children
    a unique mark through ``deployment.env_vars`` and this finds them and everything they
    started, wherever they were re-parented."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_processes(procs) -> None:
    """SIGKILL each of ``procs`` (psutil processes, which guard against a reused pid) that
    still runs: clean-up of processes a test made."""
    import contextlib

    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
