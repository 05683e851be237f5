"""How the suite runs (tests/progress.py, tests/scheduling.py, tests/conftest.py): a small
suite in a temporary directory, run by a real pytest process with and without xdist workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
from tests.conftest import (  # noqa: F401 - the suite's hooks, as they are
    pytest_configure, pytest_sessionfinish, pytest_testnodedown, pytest_xdist_make_scheduler,
)
"""

# Each test appends "worker start end" to RECORD; the group's files are named as in GROUPS.
TIMED = """
import os, time

def _run(seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with open(os.environ["RECORD"], "a") as out:
        out.write(f"{{__name__}} {{os.environ.get('PYTEST_XDIST_WORKER', '-')}} {{start}} {{time.monotonic()}} "
                  f"{{os.environ.get('RUNDOWN_FREE_PORTS', '-')}}\\n")

{tests}
"""


def write_suite(root: Path) -> None:
    (root / "tests").mkdir()
    (root / "conftest.py").write_text(CONFTEST)  # not tests/conftest.py: that name is ours
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    suite = {
        "test_capacity_e2e.py": "def test_a(): _run(0.6)\ndef test_b(): _run(0.6)\n",
        "test_e2e_agent.py": "def test_c(): _run(0.6)\ndef test_d(): _run(0.6)\n",
        "test_plain.py": "def test_e(): _run(0.1)\ndef test_f(): _run(0.1)\ndef test_g(): assert False\n",
    }
    for name, tests in suite.items():
        (root / "tests" / name).write_text(TIMED.format(tests=tests))


def run_suite(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECORD": str(root / "record.txt")}
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "RUNDOWN_FREE_PORTS"):
        env.pop(name, None)  # this suite may itself run in a worker
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def file_lines(output: str) -> dict[str, str]:
    """The progress line of each file: ``[ m:ss  done/total] path: counts in N.Ns``."""
    found = re.findall(r"^\[\s*\d+:\d\d\s+\d+/7\] (tests/\S+\.py): (.+) in \d+\.\ds$", output, re.M)
    return dict(found)


def test_without_workers_each_file_reports_when_it_finishes(tmp_path):
    write_suite(tmp_path)
    run = run_suite(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert file_lines(run.stdout) == {"tests/test_capacity_e2e.py": "2 passed",
                                      "tests/test_e2e_agent.py": "2 passed",
                                      "tests/test_plain.py": "1 failed, 2 passed"}, run.stdout
    assert "FAILED tests/test_plain.py::test_g" in run.stdout
    assert "\n..." not in run.stdout  # the lines replace the dots


@pytest.mark.timeout(180)
def test_workers_keep_a_group_on_one_worker_one_test_at_a_time(tmp_path):
    write_suite(tmp_path)
    run = run_suite(tmp_path, "-n", "3", "--dist", "loadgroup")
    assert run.returncode == 1, run.stdout + run.stderr
    assert file_lines(run.stdout) == {"tests/test_capacity_e2e.py": "2 passed",
                                      "tests/test_e2e_agent.py": "2 passed",
                                      "tests/test_plain.py": "1 failed, 2 passed"}, run.stdout
    records = [line.split() for line in (tmp_path / "record.txt").read_text().splitlines()]
    group = sorted((float(start), float(end), worker) for name, worker, start, end, _ in records
                   if name in ("test_capacity_e2e", "test_e2e_agent"))
    assert len(group) == 4 and len({worker for *_, worker in group}) == 1, group
    for (_, end, _), (start, _, _) in zip(group, group[1:], strict=False):
        assert start >= end, f"grouped tests overlapped: {group}"
    # every worker has its own range of ports, and the ranges do not overlap
    ranges = {worker: tuple(map(int, ports.split("-"))) for _, worker, _, _, ports in records}
    assert len(ranges) >= 2, ranges
    spans = sorted(ranges.values())
    assert all(high < next_low for (_, high), (next_low, _) in zip(spans, spans[1:], strict=False)), spans


def test_the_chaos_file_and_the_timing_files_are_units_and_start_first():
    from tests.scheduling import FIRST, unit_of

    assert unit_of("tests/chaos/test_chaos.py::test_x[reduced]") == "chaos"
    assert unit_of("tests/test_capacity_e2e.py::test_y") == unit_of("tests/test_e2e_agent.py::t") == "timing"
    assert unit_of("tests/test_broker.py::test_z") == "tests/test_broker.py"
    assert FIRST[:2] == ("chaos", "timing")
