"""agent.supervisor.reaper with real processes: a small fake agent spawns marked children the
way the supervisor does (asyncio, own session, PDEATHSIG), each child starts a grandchild
that calls setsid(), and the test kills or stops the fake agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.supervisor.reaper import (
    AGENT_MARK_VAR,
    CHILD_MARK_VAR,
    ProcessMarks,
    Reaper,
    find_marked,
    kill_marked,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

REPO = Path(__file__).resolve().parent.parent

FAKE_AGENT = r"""
import asyncio, json, os, subprocess, sys
from agent.supervisor.reaper import ProcessMarks, Reaper, pdeathsig_preexec

CHILD = '''
import os, subprocess, sys, time
grandchild = subprocess.Popen(
    [sys.executable, "-c",
     "import os, time; os.setsid(); print(os.getpid(), os.getsid(0), flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE,
)
print(grandchild.stdout.readline().decode().strip(), flush=True)
time.sleep(60)
'''

async def main():
    children, with_reaper = int(sys.argv[1]), sys.argv[2] == "reaper"
    marks = ProcessMarks()
    reaper = Reaper(marks.token)
    if with_reaper:
        reaper.start()
    info = {"agent": os.getpid(), "token": marks.token, "reaper": reaper.pid, "children": []}
    for _ in range(children):
        mark = marks.for_child()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD,
            stdout=subprocess.PIPE,
            env={**os.environ, **mark.env},
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )
        grandchild, grandchild_sid = map(int, (await child.stdout.readline()).split())
        info["children"].append({
            "pid": child.pid, "key": mark.key,
            "grandchild": grandchild, "grandchild_sid": grandchild_sid,
        })
    sibling = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    info["sibling"] = sibling.pid
    print(json.dumps(info), flush=True)
    command = await asyncio.to_thread(sys.stdin.readline)
    if command.strip() == "stop":
        stopped = await asyncio.to_thread(reaper.stop)
        print(json.dumps({"stopped": stopped}), flush=True)
    else:
        await asyncio.sleep(60)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """A live process (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 3.0) -> list[int]:
    """The pids still alive after ``timeout`` (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def pipe_inodes(pid: int) -> dict[int, str]:
    """fd -> pipe name (``pipe:[inode]``) for the pipes ``pid`` holds open."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            found[int(fd)] = target
    return found


class FakeAgent:
    def __init__(self, tmp_path: Path, children: int, reaper: bool = True) -> None:
        script = tmp_path / "fake_agent.py"
        script.write_text(FAKE_AGENT)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(children), "reaper" if reaper else "none"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the fake agent did not start"
        self.info = json.loads(line)
        self.children = self.info["children"]

    def command(self, text: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        kill_marked(self.info["token"], timeout=1.0)
        sibling = self.info["sibling"]
        try:
            if Path(f"/proc/{sibling}/cmdline").read_bytes() == b"sleep\x0060\x00":
                os.kill(sibling, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


@pytest.fixture
def fake_agent(tmp_path):
    started: list[FakeAgent] = []

    def start(children: int = 1, reaper: bool = True) -> FakeAgent:
        agent = FakeAgent(tmp_path, children, reaper)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.cleanup()


def test_sigkilled_agent_takes_children_and_setsid_grandchildren_with_it(fake_agent):
    agent = fake_agent(children=2)
    family = [p for c in agent.children for p in (c["pid"], c["grandchild"])]
    for child in agent.children:  # the grandchild really left the child's session
        assert child["grandchild_sid"] == child["grandchild"]
        assert os.getsid(child["pid"]) == child["pid"] != child["grandchild_sid"]
    assert all(alive(p) for p in family)

    os.kill(agent.info["agent"], signal.SIGKILL)
    agent.proc.wait()

    assert wait_gone(family) == []
    assert wait_gone([agent.info["reaper"]]) == []  # it swept, then exited
    assert alive(agent.info["sibling"])  # unmarked: never touched


def test_pdeathsig_alone_kills_the_direct_child_but_not_a_setsid_grandchild(fake_agent):
    agent = fake_agent(children=1, reaper=False)
    child = agent.children[0]
    os.kill(agent.info["agent"], signal.SIGKILL)
    agent.proc.wait()
    assert wait_gone([child["pid"]]) == []
    time.sleep(0.2)
    assert alive(child["grandchild"])  # what the reaper is for
    assert find_marked(agent.info["token"]) == [child["grandchild"]]
    assert kill_marked(agent.info["token"]) == [child["grandchild"]]
    assert wait_gone([child["grandchild"]]) == []


def test_clean_stop_kills_setsid_grandchildren(fake_agent):
    agent = fake_agent(children=1)
    child = agent.children[0]
    assert agent.command("stop") == {"stopped": True}
    assert wait_gone([child["pid"], child["grandchild"]], timeout=0.5) == []
    assert not alive(agent.info["reaper"])
    assert alive(agent.info["sibling"])
    assert agent.proc.wait(5) == 0


def test_kill_marked_child_key_kills_only_that_childs_family(fake_agent):
    agent = fake_agent(children=2)
    first, second = agent.children
    assert sorted(find_marked(first["key"])) == sorted([first["pid"], first["grandchild"]])
    assert sorted(find_marked(agent.info["token"])) == sorted(
        p for c in agent.children for p in (c["pid"], c["grandchild"])
    )

    killed = kill_marked(first["key"])

    assert sorted(killed) == sorted([first["pid"], first["grandchild"]])
    assert wait_gone([first["pid"], first["grandchild"]]) == []
    time.sleep(0.1)
    assert alive(second["pid"]) and alive(second["grandchild"])
    assert alive(agent.info["agent"]) and alive(agent.info["reaper"])
    assert alive(agent.info["sibling"])


def test_only_the_agent_holds_the_lifeline(fake_agent):
    agent = fake_agent(children=1)
    child = agent.children[0]
    lifeline = pipe_inodes(agent.info["reaper"])[0]  # the reaper reads its stdin
    assert lifeline in pipe_inodes(agent.info["agent"]).values()
    for pid in (child["pid"], child["grandchild"], agent.info["sibling"]):
        assert lifeline not in pipe_inodes(pid).values(), pid


def test_the_reaper_is_unmarked_in_its_own_session_and_ignores_termination(fake_agent):
    agent = fake_agent(children=1)
    reaper = agent.info["reaper"]
    environ = Path(f"/proc/{reaper}/environ").read_bytes()
    assert AGENT_MARK_VAR.encode() not in environ
    assert os.getsid(reaper) == reaper
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(reaper, number)
    time.sleep(0.1)
    assert alive(reaper)


def test_marks():
    marks = ProcessMarks()
    first, second = marks.for_child(), marks.for_child()
    assert first.env == {AGENT_MARK_VAR: marks.token, CHILD_MARK_VAR: f"{marks.token}.1"}
    assert first.key == f"{marks.token}.1" and second.key == f"{marks.token}.2"
    assert ProcessMarks().token != marks.token
    with pytest.raises(ValueError):
        ProcessMarks("short")
    for bad in ("", "x", "a=b", f"{marks.token}.x", "*"):
        with pytest.raises(ValueError):
            find_marked(bad)
    assert kill_marked() == [] and find_marked() == []


def test_a_marked_scanner_never_finds_itself(tmp_path):
    marks = ProcessMarks()
    mark = marks.for_child()
    sleeper = subprocess.Popen(["sleep", "30"], env={**os.environ, **mark.env})
    try:
        code = (
            "import sys; from agent.supervisor.reaper import find_marked; "
            "print(find_marked(sys.argv[1]), find_marked(sys.argv[2]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, marks.token, mark.key],
            env={**os.environ, **mark.env},  # the scanner carries the mark too
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == f"[{sleeper.pid}] [{sleeper.pid}]"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_reaper_refuses_a_bad_token():
    script = REPO / "agent" / "supervisor" / "reaper.py"
    for args in ([], [""], ["x"], ["a" * 16, "1", "extra"]):
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(script), *args], capture_output=True, timeout=5
        )
        assert done.returncode == 2, args
    with pytest.raises(ValueError):
        Reaper("not a token")
