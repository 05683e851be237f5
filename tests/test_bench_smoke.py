"""The benchmark suite in its reduced form, so it never rots (the figures are not judged here:
speed targets live in the benchmark's own report, not in timed unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(600)
def test_benchmark_suite_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--output", str(out)],
                         capture_output=True, text=True, timeout=590)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert not results["errors"], results["errors"]
    for section in ("drain_short", "drain_async", "realistic", "floor", "enqueue", "one_shot", "go_producer",
                    "fleet", "mixed"):
        assert section in results["runs"], section
    drain = results["runs"]["drain_short"]
    assert drain["tasks_per_s"] > 0 and drain["n"] > 0
    # every agent run states its configuration in the capacity model's terms
    for key in ("concurrency", "processes", "threads", "async_limit", "prefetch", "children", "slots"):
        assert key in drain["capacity"], key
    for case in results["runs"]["realistic"].values():
        assert case["agent"]["tasks_per_s"] > 0 and case["agent"]["efficiency"] > 0
    assert results["runs"]["one_shot"]["exec"]["tasks_per_s"] > 0  # fork and exec, same run
    assert results["runs"]["go_producer"]["message"]["same_bytes"]
    assert results["runs"]["mixed"]["mixed_async_over_sync_only"] > 0
    assert [row["agents"] for row in results["runs"]["fleet"]["rows"]] == [1, 2]
    assert all(row["tasks_per_s"] > 0 and row["latency_samples"] > 0 for row in results["runs"]["fleet"]["rows"])
    assert "Traceback" not in run.stdout + run.stderr
