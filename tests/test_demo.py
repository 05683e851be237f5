"""The README's first command: the demo runs the whole system and stops cleanly; a second run
reuses the first one's deployment (no virtualenv, no pip) and the log it names is still there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.demo import DemoBusyError, _demo_dir


def _demo(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([sys.executable, "-m", "agent.cli", "demo", *args], capture_output=True,
                          text=True, timeout=200, env=env, cwd=cache)


@pytest.mark.timeout(420)
def test_demo_runs_end_to_end_and_a_second_run_reuses_the_deployment(tmp_path):
    first = _demo(tmp_path)
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    assert "agent registered, deployed" in out
    assert '"hello, Ada!"' in out and "sha256" in out
    assert "reject         archived" in out and "flaky          retry" in out
    assert "agent exited with code 0" in out
    assert "Traceback" not in out + first.stderr
    # The log it names is kept (it used to be deleted with the demo's temporary directory).
    log = Path(re.search(r"\(log: (\S+)\)", out).group(1))
    assert log.is_file() and "deployed demo" in log.read_text()
    assert "deployed (virtualenv + install)" in out

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "deployed (virtualenv reused: nothing to install)" in second.stdout, second.stdout
    assert "dependencies unchanged, virtualenv reused" in log.read_text()
    assert "installed dependencies" not in log.read_text()
    assert '"hello, Ada!"' in second.stdout and "agent exited with code 0" in second.stdout


def test_fresh_empties_the_demo_directory_and_a_busy_one_is_refused(tmp_path):
    workdir = tmp_path / "demo"
    (workdir / "deployments" / "demo").mkdir(parents=True)
    (workdir / "agent.log").write_text("old run\n")
    with _demo_dir(workdir, fresh=False):
        assert (workdir / "agent.log").exists()
        with pytest.raises(DemoBusyError, match="another demo is running in .*--dir"), \
                _demo_dir(workdir, fresh=True):
            pass
    with _demo_dir(workdir, fresh=True):
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
