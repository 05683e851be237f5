"""one_shot by fork: a zygote per deployment forks each task's process (real processes, no mocks).

Every scenario checks what the task got and where it ran, and that the pool still serves
afterwards; the adversarial ones kill the zygote or the agent at the worst moment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from agent.supervisor import (
    ChildSpec,
    Outcome,
    RestartPolicy,
    TaskRequest,
    build_child_env,
    create_pool,
)
from agent.supervisor.reaper import find_marked

CHILDREN = Path(__file__).parent / "children"
FAST_RESTART = RestartPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.1)
MiB = 1024 * 1024


def spec(script: str = "zygote_app.py", env: dict[str, str] | None = None, **overrides) -> ChildSpec:
    settings = {"startup_timeout": 10.0, "queue": "zy", "stop_grace": 1.0, "deadline_grace": 0.3}
    settings.update(overrides)
    return ChildSpec(argv=[sys.executable, str(CHILDREN / script)], cwd=CHILDREN,
                     env=build_child_env(env or {}, {}, None), **settings)


def request(task_type: str, payload=None, *, timeout: float | None = None) -> TaskRequest:
    return TaskRequest(task_id=uuid.uuid4().hex, type=task_type,
                       payload=json.dumps(payload or {}).encode(), retry_count=0, max_retry=3,
                       queue="zy", deadline=time.time() + 30, timeout=timeout)


@pytest.fixture
async def pools():
    made = []

    async def make(child_spec: ChildSpec | None = None, **kwargs):
        pool = create_pool(child_spec or spec(), mode="one_shot", restart=FAST_RESTART, **kwargs)
        made.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in made:
        await pool.stop(1.0)


def result(outcome: Outcome) -> dict:
    assert outcome.kind == "success", outcome
    return json.loads(outcome.result)


def zygote_pid(pool) -> int:
    process = pool._zygote.process
    assert process is not None and process.exit is None
    return process.pid


async def test_each_task_is_a_fresh_fork_of_the_zygote_in_its_own_session(pools):
    pool = await pools()
    first, second = result(await pool.run(request("whoami"))), result(await pool.run(request("whoami")))
    zygote = zygote_pid(pool)
    for info in (first, second):
        assert info["ppid"] == zygote != os.getpid()  # forked by the zygote, not executed by us
        assert info["imported_in"] == zygote  # the module was imported once, in the zygote
        assert info["pgid"] == info["sid"] == info["pid"]  # its own session and process group
        assert info["loaded_in"] == info["pid"]  # one_shot_load: per_task (the default)
        # its own child mark, in its environment block too (what the reaper reads in /proc)
        assert info["environ_mark"] == info["env_mark"] != pool._zygote.process.mark
    assert first["pid"] != second["pid"] and first["env_mark"] != second["env_mark"]
    assert pool.status() == []
    assert not psutil.Process(zygote).children()  # reaped


async def test_what_a_task_executes_inherits_only_stdio(pools):
    pool = await pools()
    fds = result(await pool.run(request("inherited_fds")))
    assert set(fds) <= {0, 1, 2, 3}  # 3: the directory listing itself; no protocol pipe


async def test_inherited_load_runs_once_in_the_zygote(pools):
    pool = await pools(one_shot_load="inherit")
    infos = [result(await pool.run(request("whoami"))) for _ in range(3)]
    assert {i["loaded_in"] for i in infos} == {zygote_pid(pool)}
    assert len({i["pid"] for i in infos}) == 3


async def test_rlimits_apply_to_each_forked_task(pools):
    pool = await pools(spec("sdk_app.py", {"CHILD_MODE": "once"}, rlimit_as_bytes=400 * MiB,
                            rlimit_cpu_seconds=1))
    memory = await pool.run(request("alloc", {"mb": 800}))
    assert memory == Outcome("retry", error="MemoryError")
    cpu = await pool.run(request("burn_cpu"))
    assert cpu.kind == "retry" and "its CPU time limit was reached" in cpu.error
    assert result(await pool.run(request("echo", {"a": 1}))) == {"a": 1}
    assert pool._zygote.unsafe is None  # these ran forked


async def test_many_tasks_at_once_leave_no_process_behind(pools):
    pool = await pools()
    sem = asyncio.Semaphore(10)

    async def one():
        async with sem:
            return result(await pool.run(request("whoami")))

    infos = await asyncio.gather(*(one() for _ in range(150)))
    assert len({i["pid"] for i in infos}) == 150
    assert {i["ppid"] for i in infos} == {zygote_pid(pool)}
    assert pool.status() == []
    assert not psutil.Process(zygote_pid(pool)).children()


async def test_killed_task_fails_alone_and_the_zygote_keeps_forking(pools):
    pool = await pools()
    running = asyncio.create_task(pool.run(request("hang")))
    while not pool.status() or pool.status()[0]["state"] != "ready":
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    os.kill(pool.status()[0]["pid"], signal.SIGKILL)
    outcome = await asyncio.wait_for(running, 10)
    assert outcome.kind == "retry" and "was killed by SIGKILL" in outcome.error
    zygote = zygote_pid(pool)
    assert result(await pool.run(request("whoami")))["ppid"] == zygote


async def test_zygote_crash_requeues_its_running_tasks_and_a_new_zygote_starts(pools, caplog):
    caplog.set_level(logging.WARNING, logger="agent.supervisor")
    pool = await pools()
    result(await pool.run(request("whoami")))
    old = zygote_pid(pool)
    running = [asyncio.create_task(pool.run(request("hang"))) for _ in range(3)]
    while len([c for c in pool.status() if c["state"] == "ready"]) < 3:
        await asyncio.sleep(0.02)
    forks = [c["pid"] for c in pool.status()]
    os.kill(old, signal.SIGKILL)  # while its forks run their tasks
    outcomes = await asyncio.wait_for(asyncio.gather(*running), 10)
    for outcome in outcomes:  # not the tasks' fault: back to their queue, no retry counted
        assert outcome.kind == "requeue" and "its one_shot fork server exited" in outcome.error
    for pid in forks:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "one_shot fork server process" in caplog.text and "ended unexpectedly" in caplog.text
    info = result(await pool.run(request("whoami")))
    assert info["ppid"] == zygote_pid(pool) != old
    assert pool.healthy


@pytest.mark.parametrize("knob", ["ZYGOTE_APP_THREAD", "ZYGOTE_APP_LOAD_THREAD"])
async def test_threads_in_the_zygote_fall_back_to_exec(pools, caplog, knob):
    caplog.set_level(logging.WARNING, logger="agent.supervisor")
    pool = await pools(spec(env={knob: "1"}), one_shot_load="inherit")
    first, second = result(await pool.run(request("whoami"))), result(await pool.run(request("whoami")))
    assert first["ppid"] == second["ppid"] == os.getpid()  # executed by us, one interpreter each
    assert first["imported_in"] == first["pid"] and second["imported_in"] == second["pid"]
    assert "one_shot tasks start by exec, not fork" in caplog.text and "forking is unsafe" in caplog.text


async def test_runqy_style_child_falls_back_to_exec(pools, caplog):
    caplog.set_level(logging.WARNING, logger="agent.supervisor")
    pool = await pools(spec("runqy_style.py", env={"CHILD_MODE": "once"}))
    outcome = await pool.run(request("any", {"action": "echo"}))
    assert outcome.kind == "success"
    assert pool._zygote.unsafe is not None


async def test_exec_start_executes_every_task(pools):
    pool = await pools(one_shot_start="exec")
    info = result(await pool.run(request("whoami")))
    assert info["ppid"] == os.getpid() and info["imported_in"] == info["pid"]


async def test_broken_module_fails_the_zygote_start_like_an_exec_start(pools, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    policy = RestartPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.0, max_crashes=2)
    pool = create_pool(spec("sdk_app.py", {"CHILD_MODE": "once", "CHILD_FAIL_IF_EXISTS": str(broken)}),
                       mode="one_shot", restart=policy, one_shot_load="inherit")
    await pool.start()
    try:
        for _ in range(2):
            outcome = await pool.run(request("echo", {}))
            assert outcome.kind == "requeue" and "RuntimeError: broken deployment" in outcome.error
        assert not pool.healthy
        broken.unlink()
        deadline = time.monotonic() + 10
        while not pool.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert result(await pool.run(request("echo", {"ok": 1}))) == {"ok": 1}
        assert pool._zygote.alive
    finally:
        await pool.stop(1.0)


def test_zygote_and_running_forks_die_with_the_agent(tmp_path):
    """SIGKILL the process that owns the pool while a forked task runs: the kernel's
    parent-death signals take the zygote and then the fork (no reaper process here)."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_zygote import spec, request
        from agent.supervisor import create_pool

        async def main():
            pool = create_pool(spec(), mode="one_shot")
            await pool.start()
            task = asyncio.create_task(pool.run(request("hang")))
            while not pool.status() or pool.status()[0]["state"] != "ready":
                await asyncio.sleep(0.02)
            print(pool._zygote.process.pid, pool.status()[0]["pid"], pool._zygote.process.mark, flush=True)
            await task

        asyncio.run(main())
    """))
    root = Path(__file__).parent.parent
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        zygote, fork, mark = owner.stdout.readline().split()
        assert psutil.pid_exists(int(zygote)) and psutil.pid_exists(int(fork))
        assert int(fork) in find_marked(mark.split(".")[0])  # the agent's token marks it
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(int(p)) for p in (zygote, fork)):
        time.sleep(0.05)
    assert not _alive(int(zygote)) and not _alive(int(fork))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
