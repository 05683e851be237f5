"""Paired comparison of two source trees of the agent: ``python -m bench.compare A B``.

On a shared machine two full benchmark runs minutes apart differ by more than most changes
do. This runs both agents side by side instead: each is started once (from its own tree,
put first on ``PYTHONPATH``, for the agent and its child), and they take turns draining
the same batch of no-op tasks (c=128, one child, the sync handler of ``drain_c128``) in
A B B A order, so every pair is measured within seconds. The idle agent uses no CPU while
the other works. Prints each round and the median of the per-pair ratios B / A.

    python -m bench.compare /path/to/old/tree . --rounds 8 --n 60000

A tree is a directory holding ``agent/`` and ``task_sdk/`` (``git worktree add`` or
``git archive HEAD agent task_sdk | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from agent.broker import keys
from agent.local_redis import LocalRedis, find_redis_server
from bench.agent_runs import AgentSetup, AgentUnderTest, Harness, _pause, watch_processed
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
    p.add_argument("--concurrency", type=int, default=128)
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for name, tree in trees.items():
        if not (tree / "agent").is_dir() or not (tree / "task_sdk").is_dir():
            raise SystemExit(f"tree {name} ({tree}) has no agent/ and task_sdk/")
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
            setup = AgentSetup([(queue, 1)], args.concurrency, startup_cmd=SYNC_APP, env=path)
            agents[name] = AgentUnderTest(h, setup, f"compare-{name}", process_env=path).start()
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
