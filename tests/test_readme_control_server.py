"""The README's "Control server, agent and curl on one machine" section, followed literally: its
commands, read from README.md and run as written by bash in a fresh clone, with no variable
set but the ports (given through the options' environment variables, so the server and the
agent commands stay as written; only the curl URLs get the test's port)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.local_redis import free_port
from tests.agentproc import wait_until

ROOT = Path(__file__).resolve().parent.parent
SECTION = "### Control server, agent and curl on one machine"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")


def readme_commands() -> list[str]:
    """The section's bash block as commands (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text[text.index(SECTION):], re.DOTALL)
    assert block is not None, "the section has no bash block"
    joined = block.group(1).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _start(command: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.mark.timeout(300)
def test_readme_control_server_section_as_written(tmp_path):
    commands = readme_commands()
    servers = [c for c in commands if c.startswith("rundown-server ")]
    agents = [c for c in commands if c.startswith("rundown-agent ")]
    curls = [c for c in commands if c.startswith("curl ")]
    assert len(servers) == 1 and len(agents) == 1 and len(curls) >= 2, commands
    assert len(servers) + len(agents) + len(curls) == len(commands), f"a step this test does not run: {commands}"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    port, ops_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUNDOWN_WORKER_KEY", "RUNDOWN_CLIENT_KEY", "RUNDOWN_ADMIN_KEY", "RUNDOWN_SERVER_REDIS",
                        "RUNDOWN_CONFIG", "VIRTUAL_ENV")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}",
        "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1",
        "RUNDOWN_SERVER_LISTEN": f"127.0.0.1:{port}",  # rundown-server's --listen
        "RUNDOWN_SERVER_URL": f"http://127.0.0.1:{port}", "RUNDOWN_OPS_LISTEN": f"127.0.0.1:{ops_port}",
    })
    server_log, agent_log = tmp_path / "server.log", tmp_path / "agent.log"
    server = _start(servers[0], clone, env, server_log)
    agent = None
    try:
        wait_until(lambda: "rundown-server listening on" in server_log.read_text() or server.poll() is not None,
                   30, what="rundown-server listening")
        assert server.poll() is None, server_log.read_text()
        agent = _start(agents[0], clone, env, agent_log)
        answers = []
        for command in curls:
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                                  text=True, timeout=90)
            assert done.returncode == 0, (command, done.stderr)
            answers.append(json.loads(done.stdout))
        assert answers[0]["id"] == "hello-1" and answers[0]["queue"] == "demo.high", answers[0]
        final = answers[-1]
        assert final["state"] == "completed", (final, agent_log.read_text()[-3000:])
        assert final["result"]["message"] == "hello, Ada!"
    finally:
        agent_code = _stop(agent) if agent is not None else None
        server_code = _stop(server)
    server_text, agent_text = server_log.read_text(), agent_log.read_text()
    assert agent_code == 0, agent_text[-3000:]
    assert server_code == 128 + signal.SIGTERM, server_text[-3000:]
    # The dev keys work, and the server says so, naming the variables to set.
    for variable in ("RUNDOWN_WORKER_KEY", "RUNDOWN_CLIENT_KEY", "RUNDOWN_ADMIN_KEY"):
        assert f"set {variable}" in server_text
    assert "dev-client-key-change-me" not in server_text
    assert "Traceback" not in server_text + agent_text


def test_example_agent_config_takes_the_worker_key_from_the_servers_variable(tmp_path):
    """The README says to set RUNDOWN_WORKER_KEY for the agent too: the agent reads it through
    the example config and does not take it for a mistyped override of its own."""
    env = {**os.environ, "RUNDOWN_WORKER_KEY": "k" * 32, "RUNDOWN_CLIENT_KEY": "c" * 32,
           "RUNDOWN_ADMIN_KEY": "a" * 32, "RUNDOWN_SERVER_LISTEN": "127.0.0.1:8080",
           "RUNDOWN_SERVER_REDIS": "redis://127.0.0.1:6379/0", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "-validate", "-config",
                           str(ROOT / "agent" / "examples" / "agent.yml")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout and "warning" not in done.stdout + done.stderr, done.stdout
    assert "k" * 32 not in done.stdout + done.stderr
