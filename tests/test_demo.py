"""The README's first command: the demo runs the whole system and stops cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_demo_runs_end_to_end():
    run = subprocess.run([sys.executable, "-m", "agent.cli", "demo"], capture_output=True, text=True,
                         timeout=230)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "agent registered, deployed" in out
    assert '"hello, Ada!"' in out and "sha256" in out
    assert "reject         archived" in out and "flaky          retry" in out
    assert "agent exited with code 0" in out
    assert "Traceback" not in out + run.stderr
