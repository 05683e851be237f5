"""What flow limits cost a queue without any: ``python -m bench.flow``.

Two agents of this tree, started once, drain the same batch of no-op tasks in turns (A B B A
...), as ``bench.compare`` does: A has one queue and no limit anywhere; B has the same kind
of queue, unlimited, **plus** a queue with every flow limit (rate, max_running,
key_max_running, a type rate) whose backlog keeps it throttled all along. Prints each round
and the median of the per-pair ratios B / A of the unlimited queue's drain rate; the target
is >= 0.90 (an unlimited queue loses at most 10% beside limited ones). Writes the rows to
``bench/results/flow-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from agent.local_redis import LocalRedis, find_redis_server
from bench.agent_runs import SHORT_TASK, AgentSetup, AgentUnderTest, Harness, _pause
from bench.compare import SYNC_APP, drain_once
from bench.procs import Processes
from bench.workload import enqueue_batched

LIMITED = "flowlimited"
LIMITS = {"rate": "20/s", "max_running": 2, "key_max_running": 1, "types": {"noop": {"rate": "10/s"}}}


class LimitedAgent(AgentUnderTest):
    """An agent whose config also consumes the limited queue."""

    def config(self) -> Path:
        path = super().config()
        cfg = yaml.safe_load(path.read_text())
        cfg["worker"]["queues"].append({"name": LIMITED, "weight": 1, **LIMITS})
        path.write_text(yaml.safe_dump(cfg))
        return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="A/B pairs (default 6)")
    p.add_argument("--n", type=int, default=50_000, help="tasks per drain (default 50,000)")
    p.add_argument("--output", type=Path, help="JSON file to write (default bench/results/flow-<time>.json)")
    return p.parse_args(argv)


#: (pairs, tasks per drain, backlog of the limited queue) of each mode of ``python -m bench``
MODES = {"smoke": (1, 500, 200), "quick": (3, 20_000, 50_000), "full": (6, 50_000, 100_000)}


def paired(h: Harness, rounds: int, n: int, backlog: int = 100_000, echo=print) -> dict:
    """The paired drains on ``h``'s Redis; returns the rows, the ratios and their median."""
    r = h.redis()
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    agents = {}
    try:
        enqueue_batched(h.redis_url, backlog, [LIMITED], "noop")  # keeps B's limited queue throttled
        for name, cls in (("A", AgentUnderTest), ("B", LimitedAgent)):
            queue = f"flow{name}"
            _pause(r, [queue], True)
            setup = AgentSetup([(queue, 1)], startup_cmd=SYNC_APP, **SHORT_TASK)
            agents[name] = cls(h, setup, f"flow-{name}").start()
            echo(f"{name}: {setup.label()}" + (f"; beside queue {LIMITED} with {LIMITS}" if name == "B" else ""))
        time.sleep(1.0)
        echo(f"{'round':>5} {'side':>4} {'tasks/s':>9} {'agent µs':>9} {'child µs':>9}")
        for i in range(rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                row = drain_once(h, agents[name], f"flow{name}", n)
                rows[name].append(row)
                echo(f"{i + 1:>5} {name:>4} {row['tasks_per_s']:>9,.0f} {row['agent_us']:>9.1f} "
                     f"{row['child_us']:>9.1f}")
        limited_done = int(r.get(f"asynq:{{{LIMITED}}}:processed") or 0)
    finally:
        for agent in agents.values():
            agent.stop()
        r.close()
    ratios = [b["tasks_per_s"] / a["tasks_per_s"] for a, b in zip(rows["A"], rows["B"], strict=False)
              if a["tasks_per_s"]]
    median = statistics.median(ratios)
    echo(f"unlimited queue beside a throttled one: B/A per pair median {median:.3f} "
         f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.90; "
         f"the limited queue ran {limited_done} tasks meanwhile")
    return {"rows": rows, "ratios": [round(x, 3) for x in ratios], "median_ratio": round(median, 3),
            "target": 0.90, "limits": LIMITS, "n": n, "pairs": rounds, "limited_tasks_run": limited_done,
            "config": SHORT_TASK}


def run(h: Harness, mode: str) -> dict:
    """The ``flow`` section of ``python -m bench``."""
    rounds, n, backlog = MODES.get(mode, MODES["quick"])
    h.redis().flushall()
    return paired(h, rounds, n, backlog, echo=lambda line: print(f"   {line}", flush=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes()
    server = LocalRedis()
    workdir = Path(tempfile.mkdtemp(prefix="rundown-flow-bench-"))
    try:
        server.binary = find_redis_server()
        server.start()
        assert server.process is not None
        h = Harness(procs, server.url, server.process.pid, workdir, workdir)
        result = paired(h, args.rounds, args.n, echo=lambda line: print(line, flush=True))
    finally:
        procs.stop_all()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out = args.output or Path(__file__).parent / "results" / f"flow-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0 if result["median_ratio"] >= 0.90 else 1


if __name__ == "__main__":
    raise SystemExit(main())
