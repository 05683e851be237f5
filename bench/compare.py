"""Paired comparison of two source trees of the agent: ``python -m bench.compare A B``.

On a shared machine two full benchmark runs minutes apart differ by more than most changes
do. This runs both agents side by side instead: each is started once from its own tree
(started in that directory, which ``python -m`` puts first on ``sys.path``, and with the
tree first on ``PYTHONPATH`` for its child), and they take turns draining
the same batch of no-op tasks (the sync handler of ``drain_short``) in A B B A order, so
every pair is measured within seconds. The idle agent uses no CPU while the other works.
Prints each round and the median of the per-pair ratios B / A.

Each side runs the short-task configuration of ``drain_short`` unless ``--a-setup`` /
``--b-setup`` say otherwise, as ``key=value`` pairs of ``AgentSetup`` (concurrency,
processes, threads, async_limit, prefetch; ``none`` leaves a key out of the config file).
A tree from before the capacity model (commit 94df115 and older) knows only
``concurrency`` (tasks held) and ``processes``:

    python -m bench.compare /path/to/old/tree . --rounds 8 --n 60000 \
        --a-setup concurrency=128,processes=1,threads=none,prefetch=none

The same tree on both sides compares two configurations.

A tree is a directory holding ``agent/`` and ``task_sdk/`` (``git worktree add`` or
``git archive HEAD agent task_sdk | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.broker import keys
from agent.local_redis import LocalRedis, find_redis_server
from bench.agent_runs import (
    APP_DIR,
    SHORT_TASK,
    AgentSetup,
    AgentUnderTest,
    Harness,
    _pause,
    watch_processed,
)
from bench.measure import children_cpu_delta, sample_tree
from bench.procs import Processes
from bench.workload import enqueue_batched

SYNC_APP = "python noop_sync_worker.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="source tree A (the baseline)")
    p.add_argument("b", type=Path, help="source tree B")
    p.add_argument("--rounds", type=int, default=6, help="A/B pairs (default 6)")
    p.add_argument("--n", type=int, default=50_000, help="tasks per drain (default 50,000)")
    p.add_argument("--a-setup", type=parse_setup, default={}, metavar="K=V,...",
                   help=f"configuration of A (default: drain_short's, {describe(SHORT_TASK)})")
    p.add_argument("--b-setup", type=parse_setup, default={}, metavar="K=V,...",
                   help="configuration of B (default: drain_short's)")
    return p.parse_args(argv)


SETUP_KEYS = ("concurrency", "processes", "threads", "async_limit", "prefetch")


def describe(setup: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setup.items())


def parse_setup(text: str) -> dict:
    """``concurrency=1,processes=1,prefetch=64`` -> AgentSetup fields (``none``: left out,
    ``auto``: processes auto)."""
    out: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in SETUP_KEYS or not value:
            raise argparse.ArgumentTypeError(f"{item!r}: expected key=value with key one of {', '.join(SETUP_KEYS)}")
        if value in ("none", "auto"):
            out[key] = None if value == "none" else value
        else:
            out[key] = int(value)
    return out


def drain_once(h: Harness, agent: AgentUnderTest, queue: str, n: int) -> dict:
    r = h.redis()
    try:
        r.delete(keys.processed_total(queue))
        enqueue_batched(h.redis_url, n, [queue], "noop")
        first: dict = {}
        _pause(r, [queue], False)
        progress = watch_processed(r, [queue], n, timeout=60 + n / 500,
                                   on_first=lambda: first.setdefault("tree", sample_tree(agent.pid)))
        after = sample_tree(agent.pid)
        _pause(r, [queue], True)
    finally:
        r.close()
    before = first["tree"]
    done = progress.c_last - progress.c_first
    seconds = progress.t_last - progress.t_first
    return {"tasks_per_s": done / seconds if seconds > 0 else 0.0,
            "agent_us": (after.cpu - before.cpu) / max(done, 1) * 1e6,
            "child_us": children_cpu_delta(before, after) / max(done, 1) * 1e6}


def check_imports(tree: Path) -> None:
    """Fail unless the agent (started in the tree) and its child (started in the bench apps'
    directory, the tree on PYTHONPATH) import ``agent`` and ``task_sdk`` from ``tree``."""
    probe = "import agent, task_sdk; print(agent.__file__); print(task_sdk.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for cwd in (tree, APP_DIR):
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        wrong = [f for f in out if not Path(f).resolve().is_relative_to(tree)]
        if wrong:
            raise SystemExit(f"started in {cwd}, the code comes from {wrong}, not from {tree}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for name, tree in trees.items():
        if not (tree / "agent").is_dir() or not (tree / "task_sdk").is_dir():
            raise SystemExit(f"tree {name} ({tree}) has no agent/ and task_sdk/")
        check_imports(tree)
    procs = Processes()
    server = LocalRedis()
    workdir = Path(tempfile.mkdtemp(prefix="rundown-compare-"))
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        server.binary = find_redis_server()
        server.start()
        assert server.process is not None
        h = Harness(procs, server.url, server.process.pid, workdir, workdir)
        agents = {}
        r = h.redis()
        for name, tree in trees.items():
            queue = f"compare{name}"
            _pause(r, [queue], True)
            path = {"PYTHONPATH": str(tree)}
            fields = {**SHORT_TASK, **(args.a_setup if name == "A" else args.b_setup)}
            setup = AgentSetup([(queue, 1)], startup_cmd=SYNC_APP, env=path, **fields)
            # started from inside the tree: ``python -m`` imports from its working directory
            # first, so an agent started from the harness's directory would run that code
            agents[name] = AgentUnderTest(h, setup, f"compare-{name}", process_env=path, cwd=tree).start()
            print(f"{name}: {tree}: {setup.label()}")
        r.close()
        time.sleep(1.0)
        print(f"{'round':>5} {'side':>4} {'tasks/s':>9} {'agent µs':>9} {'child µs':>9}")
        for i in range(args.rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                row = drain_once(h, agents[name], f"compare{name}", args.n)
                rows[name].append(row)
                print(f"{i + 1:>5} {name:>4} {row['tasks_per_s']:>9,.0f} {row['agent_us']:>9.1f} "
                      f"{row['child_us']:>9.1f}", flush=True)
    finally:
        procs.stop_all()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for key, label in (("tasks_per_s", "tasks/s"), ("agent_us", "agent CPU µs/task")):
        a = [row[key] for row in rows["A"]]
        b = [row[key] for row in rows["B"]]
        ratios = [y / x for x, y in zip(a, b, strict=False) if x]
        print(f"{label:>18}: A median {statistics.median(a):,.1f}, B median {statistics.median(b):,.1f}; "
              f"B/A per pair: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
