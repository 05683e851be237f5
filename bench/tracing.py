"""The tracing section: what tracing costs while it is off (issue 19: nothing measurable).

Paired no-op drains (``drain_short``'s configuration) of two agents on one Redis, in turns
(A B B A ...): A runs the tree from just before tracing was added (the parent of the commit
that created ``agent/tracing/``, extracted with ``git archive``), B this tree with
``OTEL_TRACES_EXPORTER`` empty. Reports the per-pair ratios B / A of throughput and of the
agent's CPU per task, and their medians. A only differs from B by tracing as long as no
other change landed since; the result records both commits.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.agent_runs import SHORT_TASK, AgentSetup, AgentUnderTest, Harness, _pause
from bench.compare import SYNC_APP, check_imports, drain_once

REPO = Path(__file__).resolve().parent.parent
SIZES = {"smoke": (500, 1), "quick": (20_000, 4), "full": (40_000, 8)}  # (tasks, pairs)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def baseline_tree(dest: Path) -> str:
    """Extract the tree from before tracing into ``dest``; returns its commit."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "agent/tracing/__init__.py").split()
    if not added:
        raise RuntimeError("no commit adds agent/tracing/ in this repository's history")
    base = _git("rev-parse", f"{added[-1]}^")
    archive = subprocess.run(["git", "archive", base, "agent", "task_sdk"], cwd=REPO,
                             capture_output=True, timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return base


def run(h: Harness, mode: str) -> dict:
    n, pairs = SIZES.get(mode, SIZES["quick"])
    workdir = Path(tempfile.mkdtemp(prefix="rundown-tracing-base-"))
    try:
        try:
            base = baseline_tree(workdir)
        except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
            return {"skipped": f"no tree from before tracing to compare with: {exc}"}
        trees = {"before": workdir, "off": REPO}
        agents = {}
        r = h.redis()
        try:
            for name, tree in trees.items():
                check_imports(tree)
                queue = f"tracing-{name}"
                _pause(r, [queue], True)
                env = {"PYTHONPATH": str(tree), "OTEL_TRACES_EXPORTER": ""}
                setup = AgentSetup([(queue, 1)], startup_cmd=SYNC_APP, env=env, **SHORT_TASK)
                agents[name] = AgentUnderTest(h, setup, f"tracing-{name}", process_env=env,
                                              cwd=tree).start()
        finally:
            r.close()
        time.sleep(1.0)
        rows: dict[str, list[dict]] = {"before": [], "off": []}
        for i in range(pairs):
            for name in ("before", "off") if i % 2 == 0 else ("off", "before"):
                rows[name].append(drain_once(h, agents[name], f"tracing-{name}", n))
        for agent in agents.values():
            agent.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out: dict = {"n": n, "pairs": pairs, "config": setup.label(), "before_commit": base[:12],
                 "this_commit": _git("rev-parse", "--short=12", "HEAD"),
                 "before": rows["before"], "off": rows["off"]}
    for key in ("tasks_per_s", "agent_us"):
        ratios = [b[key] / a[key] for a, b in zip(rows["before"], rows["off"], strict=True) if a[key]]
        out[f"{key}_off_over_before"] = [round(x, 3) for x in ratios]
        out[f"median_{key}_off_over_before"] = round(statistics.median(ratios), 3) if ratios else None
    return out
