"""Only task_sdk's own channel carries answers: a forged answer line, written by a handler in
any way a process can write, is logged as output and never completes a task (its own or a
neighbour's). Real child processes (tests/children/forger.py) and real pipes."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from agent.client import Client
from agent.supervisor import Child, Outcome
from tests.agentproc import AgentProcess, local_config
from tests.test_supervisor import CHILDREN, make_spec, request

WAYS_AFTER_IMPORT = ["print", "stdout_write", "fd1", "subprocess_echo"]
"""Written after task_sdk took over fd 1: they reach the agent on the child's stderr."""
WAYS_BEFORE_IMPORT = ["early_stdout", "helper_process"]
"""A duplicate of the original stdout, and a process started with it, both made before
task_sdk was imported: they reach the agent on the child's stdout."""


@pytest.fixture
async def forger():
    children: list[Child] = []

    async def start(**overrides) -> Child:
        child = Child(make_spec("forger.py", **overrides))
        children.append(child)
        await child.start()
        return child

    yield start
    await asyncio.gather(*(child.stop(grace=1.0) for child in children))


def output_lines(caplog, task_id: str) -> list[logging.LogRecord]:
    """The log records of child output that carry a forged line for ``task_id``."""
    return [r for r in caplog.records if r.name == "agent.child" and task_id in r.getMessage()]


@pytest.mark.parametrize("way", WAYS_AFTER_IMPORT + WAYS_BEFORE_IMPORT)
async def test_a_forged_answer_for_its_own_task_is_logged_not_obeyed(forger, caplog, way):
    caplog.set_level(logging.INFO, logger="agent.child")
    child = await forger()
    forging = request("forge", {"way": way})
    outcome = await child.run(forging)
    assert outcome == Outcome("success", result=json.dumps({"real": True, "way": way},
                                                           separators=(",", ":")).encode())
    logged = output_lines(caplog, forging.task_id)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert f'"task_id": "{forging.task_id}"' in logged[0].getMessage()
    assert logged[0].stream == ("stdout" if way in WAYS_BEFORE_IMPORT else "stderr")
    if way in WAYS_BEFORE_IMPORT:
        assert logged[0].levelno == logging.WARNING
        assert "not this child's protocol channel" in logged[0].getMessage()
    again = await child.run(request("slow", {"seconds": 0}))
    assert again == Outcome("success", result=b'{"slow":true}')


@pytest.mark.parametrize("way", ["early_stdout", "print", "helper_process"])
async def test_a_forged_answer_for_a_neighbours_task_cannot_complete_it(forger, caplog, way):
    caplog.set_level(logging.INFO, logger="agent.child")
    child = await forger(threads=2)
    neighbour = request("slow", {"seconds": 0.8})
    running = asyncio.create_task(child.run(neighbour))
    await asyncio.sleep(0.2)
    assert child.handler_started(neighbour.task_id)
    forging = await child.run(request("forge", {"way": way, "target": neighbour.task_id}))
    assert forging.kind == "success"
    assert not running.done()  # the forged line did not answer it
    assert await running == Outcome("success", result=b'{"slow":true}')
    assert len(output_lines(caplog, neighbour.task_id)) == 1


async def test_what_a_handler_starts_inherits_no_protocol_pipe(forger):
    child = await forger()
    outcome = await child.run(request("inheritance"))
    seen = json.loads(outcome.result)
    # stdin, stdout, stderr and the probe's own listing of /proc/self/fd: nothing else
    assert seen == {"fds": [0, 1, 2, 3], "variable": None}


async def test_one_shot_child_answers_on_its_private_channel(caplog):
    caplog.set_level(logging.INFO, logger="agent.child")
    child = Child(make_spec("forger.py"), one_shot=True)
    await child.start()
    try:
        assert child.channel == "private"
        forging = request("forge", {"way": "early_stdout"})
        outcome = await child.run(forging)
        assert outcome.kind == "success" and json.loads(outcome.result)["real"] is True
        assert len(output_lines(caplog, forging.task_id)) == 1
        assert (await child.wait_exited()).returncode == 0
    finally:
        await child.stop(grace=1.0)


async def test_a_runqy_style_child_keeps_speaking_over_stdout():
    child = Child(make_spec("runqy_style.py"))
    await child.start()
    try:
        assert child.channel == "stdout"
        outcome = await child.run(request("any", {"action": "echo"}))
        assert json.loads(outcome.result) == {"echo": {"action": "echo"}, "greeting": "hello"}
    finally:
        await child.stop(grace=1.0)


async def test_a_ready_line_on_the_original_stdout_after_task_sdk_is_imported_is_output(
        tmp_path, caplog):
    """Code cannot talk the agent into reading answers from stdout once task_sdk is in:
    the SDK announced its private channel at import, before this line was written."""
    caplog.set_level(logging.INFO, logger="agent.child")
    app = tmp_path / "app.py"
    app.write_text(
        "import os\n"
        "EARLY_STDOUT = os.dup(1)\n"
        "from task_sdk import run, task\n"
        "os.write(EARLY_STDOUT, b'{\"status\": \"ready\"}\\n')\n"
        "@task\n"
        "def echo(payload):\n"
        "    return payload\n"
        "run()\n")
    child = Child(make_spec(str(app)))
    await child.start()
    try:
        assert child.channel == "private" and child.ready is not None
        assert child.ready.protocol == 1
        assert await child.run(request("any", [1])) == Outcome("success", result=b"[1]")
        assert any('stdout (ignored: a protocol message on stdout' in r.getMessage()
                   for r in caplog.records)
    finally:
        await child.stop(grace=1.0)


def test_forged_answers_through_a_real_agent_leave_the_real_results_in_redis(redis_url,
                                                                              tmp_path):
    """``rundown-agent -config`` running forger.py: every forging task and the neighbour a
    forger aimed at complete with their real results; the forged lines are in the log as
    the child's output."""
    config, port = local_config(tmp_path, redis_url, ["default"], concurrency=2,
                                startup_cmd="python forger.py", app_dir=CHILDREN,
                                extra_env=_sdk_path(), threads=2)
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        with Client(redis_url) as client:
            neighbour = client.enqueue("slow", {"seconds": 1.5}, task_id="neighbour", retention=600)
            forging = [client.enqueue("forge", {"way": way}, task_id=f"own-{way}", retention=600)
                       for way in WAYS_AFTER_IMPORT + WAYS_BEFORE_IMPORT]
            aimed = client.enqueue("forge", {"way": "early_stdout", "target": "neighbour"},
                                   task_id="aimed", retention=600)
            done = {info.id: client.wait("default", info.id, timeout=30)
                    for info in [neighbour, aimed, *forging]}
    finally:
        assert agent.stop() == 0
    assert done["neighbour"].state == "completed"
    assert done["neighbour"].result_json() == {"slow": True}
    for way in WAYS_AFTER_IMPORT + WAYS_BEFORE_IMPORT:
        info = done[f"own-{way}"]
        assert (info.state, info.result_json()) == ("completed", {"real": True, "way": way})
    assert done["aimed"].result_json() == {"real": True, "way": "early_stdout"}
    logged = [json.loads(line) for line in agent.output().splitlines() if line.startswith("{")]
    output = [r["msg"] for r in logged if r.get("logger") == "agent.child"]
    for task_id in ["neighbour", *(f"own-{way}" for way in WAYS_AFTER_IMPORT + WAYS_BEFORE_IMPORT)]:
        assert sum(f'"task_id": "{task_id}"' in line for line in output) == 1, task_id


def _sdk_path() -> dict[str, str]:
    """Children import the same task_sdk as the tests do."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


async def test_a_task_sdk_without_the_private_channel_speaks_over_stdout(tmp_path):
    """A task_sdk that does not know the private channel (an older copy the deployment pins)
    is served as before: over stdin and stdout, with its slots."""
    app = tmp_path / "app.py"
    app.write_text(
        "import os\n"
        "os.environ.pop('RUNDOWN_PROTOCOL_FDS')\n"
        "from task_sdk import run, task\n"
        "@task\n"
        "async def echo(payload):\n"
        "    return payload\n"
        "run()\n")
    child = Child(make_spec(str(app), async_limit=4))
    await child.start()
    try:
        assert child.channel == "stdout" and child.slots == 4
        outcomes = await asyncio.gather(*(child.run(request("any", [n])) for n in range(8)))
        assert outcomes == [Outcome("success", result=f"[{n}]".encode()) for n in range(8)]
    finally:
        await child.stop(grace=1.0)
