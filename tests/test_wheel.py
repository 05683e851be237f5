"""The built wheel, installed into a fresh virtualenv outside the checkout, is complete: the demo
runs, ``rundown-server --check`` accepts the shipped example queues file, and an agent started
with ``-config`` runs a task of the shipped example code.

The wheel is built from a copy of what it is made of (pyproject.toml, README.md, agent/,
task_sdk/), so nothing else of the checkout can stand in for a missing file, and the build
writes nothing into the checkout. pip builds it with build isolation and installs the
dependencies from its configured index: on a CI machine that is PyPI, on a machine with a
warm pip cache mostly the cache (about 15 s for both steps here).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from agent.client import Client
from agent.local_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 600


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A fresh virtualenv with the wheel of the current sources installed, and a clean cwd."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("agent", "task_sdk"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_USER")}
    _run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(base / "dist"), "--no-deps",
          "--disable-pip-version-check", "-q"], cwd=base, env=pip_env, timeout=PIP_TIMEOUT)
    wheels = list((base / "dist").glob("rundown_agent-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheels[0])],
         cwd=base, env=pip_env, timeout=PIP_TIMEOUT)
    cwd = base / "elsewhere"
    cwd.mkdir()
    run_env = {**pip_env, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
               "XDG_CACHE_HOME": str(base / "cache"), "PYTHONUNBUFFERED": "1"}
    for key in [k for k in run_env if k.startswith("RUNDOWN_") and k != "RUNDOWN_FREE_PORTS"]:
        del run_env[key]
    return {"bin": env_dir / "bin", "python": python, "cwd": cwd, "base": base, "env": run_env}


def _installed_path(installed: dict, name: str) -> Path:
    done = _run([str(installed["python"]), "-c", f"from agent.examples import {name}; print({name})"],
                cwd=installed["cwd"], env=installed["env"])
    path = Path(done.stdout.strip())
    assert installed["base"] in path.parents and ROOT not in path.parents, path  # the wheel's copy
    return path


@pytest.mark.timeout(900)
def test_wheel_demo_runs(installed):
    done = _run([str(installed["bin"] / "rundown-agent"), "demo"], cwd=installed["cwd"], env=installed["env"],
                timeout=240)
    out = done.stdout
    assert '"hello, Ada!"' in out and "reject         archived" in out and "agent exited with code 0" in out
    assert "Traceback" not in out + done.stderr


@pytest.mark.timeout(900)
def test_wheel_server_checks_the_shipped_queues_file(installed):
    queues = _installed_path(installed, "QUEUES_FILE")
    done = _run([str(installed["bin"] / "rundown-server"), "--queues", str(queues), "--check"],
                cwd=installed["cwd"], env=installed["env"])
    assert done.stdout.endswith("2 queues, 3 API keys: OK\n"), done.stdout
    assert "set RUNDOWN_WORKER_KEY" in done.stderr  # its dev keys are reported, not refused


@pytest.mark.timeout(900)
def test_wheel_agent_runs_a_task_of_the_shipped_example(installed, redis_url):
    tasks = _installed_path(installed, "TASKS_DIR")
    work = installed["base"] / "agent-run"
    work.mkdir()
    ops_port = free_port()
    config = work / "agent.yml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url},
        "worker": {"queues": ["wheel"], "concurrency": 1, "shutdown_timeout": "5s"},
        "deployment": {"path": str(tasks), "startup_cmd": "python worker.py", "dir": str(work / "deployment")},
        "ops": {"listen": f"127.0.0.1:{ops_port}"},
        "logging": {"format": "json"},
    }))
    log = work / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([str(installed["bin"] / "rundown-agent"), "-config", str(config)],
                                 cwd=installed["cwd"], env=installed["env"], stdout=out, stderr=subprocess.STDOUT)
    try:
        with Client(redis_url) as client:
            info = client.enqueue("greet", {"name": "wheel"}, queue="wheel", retention=60)
            done = client.wait("wheel", info.id, timeout=120)
            assert done.state == "completed", log.read_text()[-3000:]
            assert done.result_json()["message"] == "hello, wheel!"
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.timeout(900)
def test_wheel_ships_every_dashboard_asset(installed):
    """The dashboard needs no CDN and no build step: htmx, the CSS, the templates and the Lua
    script are in the wheel, and the templates load from it."""
    snippet = ("from importlib import resources\n"
               "from agent.server.dashboard.render import environment\n"
               "root = resources.files('agent.server.dashboard')\n"
               "for name in ('static/htmx.min.js', 'static/htmx-LICENSE.txt', 'static/dashboard.css',\n"
               "             'lua/scan.lua', 'templates/base.html', 'templates/_overview.html'):\n"
               "    assert root.joinpath(name).is_file(), name\n"
               "for name in ('overview.html', 'tasks.html', 'task.html', 'failures.html', 'login.html'):\n"
               "    environment().get_template(name)\n"
               "print(root)\n")
    done = _run([str(installed["python"]), "-c", snippet], cwd=installed["cwd"], env=installed["env"])
    assert str(installed["base"]) in done.stdout  # the wheel's copy, not the checkout's
