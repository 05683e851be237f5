"""What task progress costs when no handler uses it: ``python -m bench.progress OLD_TREE [NEW_TREE]``.

Paired, like ``bench.compare``: an agent from each tree (OLD: the code before progress, e.g.
``git archive 106259b~1 agent task_sdk | tar -x -C /tmp/before-progress``; NEW: default the
working tree) takes turns (A B B A ...) on the same work, seconds apart:

* a drain of ``--n`` no-op tasks in the short-task configuration (tasks/s, agent CPU per task);
* ``--samples`` no-op tasks one at a time on the idle agent (enqueue -> completed, p50/p99).

The no-op handler never calls ``progress()``: this is the price of the feature being there
(a status-line branch in the child reader, the board, a field in ``/status``). Prints every
round and, per measure, the median of the per-pair ratios NEW / OLD (the target: p99 within
2 %, i.e. a ratio <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from agent.local_redis import LocalRedis, find_redis_server
from bench.agent_runs import (
    SHORT_TASK,
    AgentSetup,
    AgentUnderTest,
    Harness,
    _pause,
    idle_and_latency,
)
from bench.compare import SYNC_APP, check_imports, drain_once
from bench.procs import Processes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.progress", description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path, help="source tree before progress (the baseline)")
    parser.add_argument("new", type=Path, nargs="?", default=Path("."), help="source tree with it")
    parser.add_argument("--rounds", type=int, default=6, help="A/B pairs (default 6)")
    parser.add_argument("--n", type=int, default=20_000, help="tasks per drain (default 20,000)")
    parser.add_argument("--samples", type=int, default=100,
                        help="single tasks per latency run, per producer (default 100)")
    parser.add_argument("--output", type=Path, help="write the rows and ratios as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"A": args.old.resolve(), "B": args.new.resolve()}
    for tree in trees.values():
        check_imports(tree)
    procs = Processes()
    server = LocalRedis()
    workdir = Path(tempfile.mkdtemp(prefix="rundown-progress-bench-"))
    logdir = Path(tempfile.mkdtemp(prefix="rundown-progress-bench-logs-"))  # kept
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        server.binary = find_redis_server()
        server.start()
        assert server.process is not None
        h = Harness(procs, server.url, server.process.pid, workdir, logdir)
        agents = {}
        r = h.redis()
        for name, tree in trees.items():
            queue = f"progress{name}"
            _pause(r, [queue], True)
            path = {"PYTHONPATH": str(tree)}
            setup = AgentSetup([(queue, 1)], startup_cmd=SYNC_APP, env=path, **SHORT_TASK)
            agents[name] = AgentUnderTest(h, setup, f"progress-{name}", process_env=path, cwd=tree).start()
            print(f"{name}: {tree}: {setup.label()}")
        r.close()
        time.sleep(1.0)
        print(f"{'round':>5} {'side':>4} {'tasks/s':>9} {'agent µs':>9} {'p50 ms':>7} {'p99 ms':>7}")
        for i in range(args.rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                queue = f"progress{name}"
                row = drain_once(h, agents[name], queue, args.n)
                r = h.redis()
                _pause(r, [queue], False)
                r.close()
                latency = idle_and_latency(h, agents[name], queue, args.samples, 0.5)["latency_client"]
                r = h.redis()
                _pause(r, [queue], True)
                r.close()
                row.update(p50_ms=latency["p50_ms"], p99_ms=latency["p99_ms"])
                rows[name].append(row)
                print(f"{i + 1:>5} {name:>4} {row['tasks_per_s']:>9,.0f} {row['agent_us']:>9.1f} "
                      f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}", flush=True)
    except BaseException:
        print(f"failed; the processes' logs are in {logdir}")
        raise
    finally:
        procs.stop_all()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for key, label in (("tasks_per_s", "tasks/s"), ("agent_us", "agent CPU µs/task"),
                       ("p50_ms", "idle latency p50"), ("p99_ms", "idle latency p99")):
        a = [row[key] for row in rows["A"]]
        b = [row[key] for row in rows["B"]]
        ratios = [y / x for x, y in zip(a, b, strict=False) if x]
        summary[key] = {"old_median": statistics.median(a), "new_median": statistics.median(b),
                        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                        "ratio_max": max(ratios)}
        print(f"{label:>18}: OLD median {statistics.median(a):,.2f}, NEW median {statistics.median(b):,.2f}; "
              f"NEW/OLD per pair: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
