"""The benchmark suite, one command: ``python -m bench [--quick | --smoke] [options]``.

Starts its own redis-server, measures the agent (no-op drains in the default, the short-task
and an async configuration, idle CPU and latency, realistic 10 ms and 50 ms handlers, scale
runs, one_shot), the floor (the same Lua scripts with no agent) and the peers (Dramatiq, arq,
installed into bench/.venv-peers), prints tables and writes
bench/results/bench-<time>-<mode>.json. Every process it starts is stopped on the way out,
Ctrl-C included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.local_redis import LocalRedis, find_redis_server  # noqa: E402
from bench import agent_runs, fleet, floor, go_producer, micro, peers, profiling, report  # noqa: E402
from bench import dashboard as dashboard_bench  # noqa: E402
from bench import tracing as tracing_bench  # noqa: E402
from bench.agent_runs import SHORT_TASK, AgentSetup, Harness  # noqa: E402
from bench.measure import code_identity, machine  # noqa: E402
from bench.procs import Processes, signals_as_interrupt, uninterruptible  # noqa: E402
from bench.workload import enqueue_single  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
SYNC_APP = "python noop_sync_worker.py"
ASYNC_APP = "python noop_worker.py"
MIXED_APP = "python mixed_worker.py"  # sync and async handlers in one module

# Agent configurations (AgentSetup fields); every result records its configuration, and
# every printed row says it (processes, threads, async_limit, prefetch, concurrency).
DEFAULTS = dict(concurrency=10, processes="auto", threads=1, prefetch=0)  # the config file's defaults
ASYNC_128 = dict(concurrency=128, processes=1, threads=1, async_limit=128, prefetch=0)
ONE_SHOT = dict(concurrency=10, processes=None, threads=None, prefetch=0)
ONE_SHOT_FORK = dict(ONE_SHOT, one_shot_start="fork")  # a zygote forks each task's process
ONE_SHOT_EXEC = dict(ONE_SHOT, one_shot_start="exec")  # a fresh interpreter per task

# The realistic section: handlers that take time, at 16 and 128 handlers running at once, for
# the agent and its peers alike. Sync: 2 processes (one per core) of slots/2 threads, as
# Dramatiq; each child may hold one waiting task per thread (prefetch = threads), as
# Dramatiq's worker holds 2 x threads messages. Async: one child, async_limit = slots.
REALISTIC = {
    # case: (task type, app, handler seconds, running handlers, agent config)
    "sync_10ms_16": ("sleep10ms", SYNC_APP, 0.010, 16,
                     dict(concurrency=16, processes=2, threads=8, prefetch=8)),
    "sync_10ms_128": ("sleep10ms", SYNC_APP, 0.010, 128,
                      dict(concurrency=128, processes=2, threads=64, prefetch=64)),
    "async_50ms_16": ("sleep50ms", ASYNC_APP, 0.050, 16,
                      dict(concurrency=16, processes=1, threads=1, async_limit=16, prefetch=16)),
    "async_50ms_128": ("sleep50ms", ASYNC_APP, 0.050, 128,
                       dict(concurrency=128, processes=1, threads=1, async_limit=128, prefetch=128)),
}

SIZES = {
    # CI: proves every section still runs; the figures mean little
    "smoke": dict(single=300, defaults=2_000, short=5_000, latency=50, idle=1.0, floor=5_000, peers=0,
                  pending=5_000, queues50=5_000, big=100, one_shot=20, one_shot_fork=100, go=2_000, go_pairs=1, mixed=2_000, mixed_rounds=1, startup_reps=3,
                  fleet=dict(counts=(1, 2), n=500, idle_s=1.0, busy_s=1.0, latency_rate=50, latency_s=1.0),
                  short_reps=1, reference=2_000,
                  realistic=dict(sync_10ms_16=100, sync_10ms_128=300, async_50ms_16=50, async_50ms_128=300)),
    # a few minutes on a 2-core machine (plus the peers' virtualenv on the first run)
    "quick": dict(single=3_000, defaults=20_000, short=60_000, latency=60, idle=3.0, floor=60_000,
                  peers=10_000, pending=200_000, queues50=60_000, big=2_000, one_shot=100, one_shot_fork=2_000, go=30_000, go_pairs=2, mixed=30_000, mixed_rounds=1,
                  fleet=dict(counts=(1, 8), n=10_000, idle_s=3.0, busy_s=3.0, latency_rate=200, latency_s=3.0),
                  startup_reps=5, short_reps=1, reference=50_000,
                  realistic=dict(sync_10ms_16=1_500, sync_10ms_128=4_000, async_50ms_16=500,
                                 async_50ms_128=3_000)),
    # the README figures
    "full": dict(single=10_000, defaults=100_000, short=300_000, latency=200, idle=10.0, floor=300_000,
                 peers=50_000, pending=1_000_000, queues50=300_000, big=10_000, one_shot=500, one_shot_fork=6_000, go=100_000, go_pairs=3, mixed=100_000, mixed_rounds=2,
                 fleet=dict(counts=(1, 8, 16, 32), n=40_000, idle_s=5.0, busy_s=5.0, latency_rate=200,
                            latency_s=5.0),
                 startup_reps=10, short_reps=3, reference=150_000,
                 realistic=dict(sync_10ms_16=3_000, sync_10ms_128=8_000, async_50ms_16=1_000,
                                async_50ms_128=6_000)),
}
SECTIONS = ("enqueue", "drain_defaults", "drain_short", "drain_async", "floor", "peers", "realistic",
            "scale_pending", "scale_queues", "scale_queues_parents", "scale_payload", "one_shot", "go_producer", "fleet", "mixed",
            "micro", "profile", "batching", "dashboard", "flow", "workflows", "tracing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="smaller N: under ~3 minutes on a 2-core machine")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny N and no peers: checks that every section still runs (CI)")
    p.set_defaults(mode="full")
    p.add_argument("--pending", type=int, help="N of the many-pending scale run (full: 1,000,000)")
    p.add_argument("--n", type=int, help="N of the short-task and async no-op drains (and the floor)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip Dramatiq and arq (the peers section, and their rows of the realistic one)")
    p.add_argument("--profile", choices=("py-spy", "cprofile", "syscalls"),
                   help="add a profiled short-task drain (py-spy from the peers' venv, cProfile, "
                        "or system calls per task with perf stat)")
    p.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    p.add_argument("--output", type=Path, help="JSON file to write (default: bench/results/...)")
    p.add_argument("--markdown", type=Path, metavar="RESULTS_JSON",
                   help="print the README's tables for an earlier run's JSON, and exit")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[str]:
    wanted = list(SECTIONS)
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in names if s not in SECTIONS]
        if unknown:
            raise SystemExit(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        wanted = [s for s in SECTIONS if s in names]
    if args.no_peers or args.mode == "smoke":
        wanted = [s for s in wanted if s != "peers"]
    if not args.profile:
        wanted = [s for s in wanted if s != "profile"]
    if args.mode != "full" and not args.only:
        wanted = [s for s in wanted if s != "scale_queues_parents"]
    if args.mode == "quick" and not args.only:  # fleet: 57 agent starts in full, 3 in smoke
        wanted = [s for s in wanted if s != "fleet"]
    return wanted


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "redis-server ?"
    version = next((t[2:] for t in out.split() if t.startswith("v=")), "?")
    return f"redis-server {version}"


class Suite:
    def __init__(self, h: Harness, args: argparse.Namespace, sizes: dict, results: dict) -> None:
        self.h, self.args, self.sizes, self.results = h, args, sizes, results
        self.runs = results["runs"]

    def run(self, section: str) -> None:
        print(f"-- {section} ...", flush=True)
        t0 = time.monotonic()
        try:
            getattr(self, section)()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            self.results["errors"][section] = f"{type(exc).__name__}: {exc}"
            (self.h.logdir / f"error-{section}.txt").write_text(traceback.format_exc())
            print(f"   {section} failed: {exc}", flush=True)
        print(f"   {section} done in {time.monotonic() - t0:.1f}s", flush=True)

    def _drain(self, name: str, n: int, config: dict | None = None, app: str = SYNC_APP, **kw):
        """One drain of one agent; ``config``: AgentSetup fields (default: the short-task one)."""
        queues = kw.pop("queues", [("bench", 1)])
        mode = kw.pop("mode", "long_running")
        setup = AgentSetup(queues, mode=mode, startup_cmd=app, **(config or SHORT_TASK))
        return agent_runs.drain(self.h, name, n=n, setup=setup, **kw)

    def enqueue(self) -> None:
        r = self.h.redis()
        r.flushall()
        n = self.sizes["single"]
        seconds = enqueue_single(self.h.redis_url, n, "scratch", "noop")
        r.flushall()
        r.close()
        self.runs["enqueue"] = {"single_n": n, "single_per_s": round(n / seconds, 1), "batch": 1000}

    def drain_defaults(self) -> None:
        """No-op tasks with the config file's defaults: concurrency 10, processes auto (ten
        children of one thread), prefetch 0."""
        self.runs["drain_defaults"], _ = self._drain("defaults", self.sizes["defaults"], DEFAULTS)

    def drain_short(self) -> None:
        """The headline drain, in the short-task configuration, repeated (a shared machine
        drifts within a minute): the run with the median rate is reported, every run's rate
        and CPU are kept beside it. Then the idle agent's CPU and latency."""
        n = self.args.n or self.sizes["short"]
        runs = [self._drain("short", n)[0] for _ in range(self.sizes["short_reps"] - 1)]
        last, agent = self._drain("short", n, keep_agent=True)
        runs.append(last)
        result = dict(sorted(runs, key=lambda r: r["tasks_per_s"] or 0)[len(runs) // 2])
        result["repetitions"] = [{"tasks_per_s": r["tasks_per_s"],
                                  "agent_cpu_us_per_task": r["agent_cpu_us_per_task"]} for r in runs]
        self.runs["drain_short"] = result
        self.runs.setdefault("enqueue", {})["batched_per_s"] = result["enqueue_per_s"]
        self.runs["enqueue"]["batched_n"] = n
        self.runs["enqueue"].setdefault("batch", 1000)
        assert agent is not None
        try:
            self.runs["idle_latency"] = agent_runs.idle_and_latency(
                self.h, agent, "bench", self.sizes["latency"], self.sizes["idle"])
            self.runs["idle_latency"]["config"] = result["config"]
        finally:
            code = agent.stop()
            self.runs["drain_short"]["agent_exit_code"] = code

    def drain_async(self) -> None:
        n = self.args.n or self.sizes["short"]
        self.runs["drain_async"], _ = self._drain("async", n, ASYNC_128, app=ASYNC_APP)

    def realistic(self) -> None:
        """Handlers that take time (10 ms blocking, 50 ms awaiting) at 16 and 128 handlers
        running at once: the agent, and the peers at the same number of running handlers.
        Efficiency = tasks/s over what the running handlers allow (slots / handler time)."""
        with_peers = not (self.args.no_peers or self.args.mode == "smoke")
        if with_peers:
            self.results["meta"]["peer_versions"] = peers.ensure_venv(self.h.logdir / "peers-pip.log")
        out: dict = {}
        self.runs["realistic"] = out
        for case, (task, app, seconds, slots, config) in REALISTIC.items():
            n = self.sizes["realistic"][case]
            ideal = slots / seconds
            row: dict = {"task_type": task, "handler_seconds": seconds, "running_handlers": slots,
                         "ideal_tasks_per_s": round(ideal, 1), "n": n}
            out[case] = row
            runs = [("agent", partial(self._realistic_agent, case, n, config, app, task))]
            if with_peers:  # Dramatiq: 2 processes x slots/2 threads; arq: max_jobs = slots
                runs += [("dramatiq", partial(peers.run_dramatiq, self.h, n, processes=2, threads=slots // 2,
                                              task=task, asyncio_actors=task == "sleep50ms")),
                         ("arq", partial(peers.run_arq, self.h, n, max_jobs=slots, poll_delay=0.05, task=task))]
            for system, fn in runs:
                try:
                    result = fn()
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - one broken run must not hide the others
                    row[system] = {"error": f"{type(exc).__name__}: {exc}"}
                    self.results["errors"][f"realistic.{case}.{system}"] = row[system]["error"]
                    continue
                if result.get("tasks_per_s"):
                    result["efficiency"] = round(result["tasks_per_s"] / ideal, 3)
                row[system] = result

    def batching(self) -> None:
        """Batched handlers against unbatched at the same child slots (bench/batching.py)."""
        from bench import batching

        out = self.runs["batching"] = batching.run(self.h, self.args.mode)
        print(f"   batched {out['batched']['tasks_per_s']}/s vs unbatched "
              f"{out['unbatched']['tasks_per_s']}/s: {out['throughput_ratio']}x (target >= 10x); "
              f"added latency p50 {out['added_latency_ms']['p50']} ms, p99 "
              f"{out['added_latency_ms']['p99']} ms (target <= "
              f"{out['p99_added_latency_target_ms']:g} ms)", flush=True)

    def workflows(self) -> None:
        """A 100-step chain: each successor's enqueue against a plain enqueue, and the time per
        step through an agent against one plain task at a time (bench/workflows.py)."""
        from bench import workflows

        reps = {"smoke": 1, "quick": 3}.get(self.args.mode, 5)
        steps = 20 if self.args.mode == "smoke" else workflows.STEPS
        out = self.runs["workflows"] = workflows.run(self.h, reps, steps)
        s, e = out["successor_enqueue"], out["end_to_end"]
        print(f"   successor enqueue {s['successor_enqueue_us_p50']} us vs plain enqueue "
              f"{s['plain_enqueue_us_p50']} us ({s['ratio']}x); through the agent "
              f"{e['chain_ms_per_step']} ms per step vs {e['plain_ms_per_task']} ms per plain task", flush=True)

    def flow(self) -> None:
        """What flow limits cost a queue without any, paired in one run (bench/flow.py)."""
        from bench import flow

        self.runs["flow"] = flow.run(self.h, self.args.mode)

    def floor(self) -> None:
        n = self.args.n or self.sizes["floor"]
        variants = floor.VARIANTS if floor.has_done_many() else ("done",)
        out: dict = {v: floor.run_floor(self.h, n=n, variant=v) for v in variants}
        # the floor of the Redis layout: the best variant without a child
        best = max((v for v in out if v != "child"), key=lambda k: out[k]["tasks_per_s"])
        out["best"] = {"variant": best, "tasks_per_s": out[best]["tasks_per_s"]}
        self.runs["floor"] = out

    def peers(self) -> None:
        versions = peers.ensure_venv(self.h.logdir / "peers-pip.log")
        self.results["meta"]["peer_versions"] = versions
        n = self.sizes["peers"]
        out: dict = {}
        self.runs["peers"] = out
        for name, fn in (("dramatiq", lambda: peers.run_dramatiq(self.h, n)),
                         ("arq", lambda: peers.run_arq(self.h, n, poll_delay=0.05))):
            try:
                out[name] = fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                self.results["errors"][f"peers.{name}"] = out[name]["error"]

    def _realistic_agent(self, case: str, n: int, config: dict, app: str, task: str) -> dict:
        return self._drain(f"realistic-{case}", n, config, app=app, task_type=task, min_rate=50)[0]

    def _single_queue_reference(self) -> dict:
        """A short single-queue drain (short-task configuration), run just before and just
        after a scale run: the scale ratio compares with the same minutes (the machine's speed
        drifts)."""
        result, _ = self._drain("reference", self.sizes["reference"])
        return {"tasks_per_s": result["tasks_per_s"], "agent_cpu_us_per_task": result["agent_cpu_us_per_task"],
                "redis_cpu_us_per_task": result["redis_cpu_us_per_task"]}

    def _paired(self, section: str, scale_run) -> None:
        before = self._single_queue_reference()
        result = scale_run()
        after = self._single_queue_reference()
        result["single_queue_reference"] = [before, after]
        self.runs[section] = result

    def scale_pending(self) -> None:
        n = self.args.pending or self.sizes["pending"]
        self._paired("scale_pending", lambda: self._drain("pending", n, enqueue_procs=2)[0])

    def scale_queues(self) -> None:
        # 50 weighted sub-queues of one parent queue: one deployment and its children, as in
        # the single-queue run, so the figure isolates dequeueing across 50 queues.
        queues = [(f"bench.q{i:02d}", 1 + i % 10) for i in range(50)]

        def run() -> dict:
            result, _ = self._drain("queues50", self.sizes["queues50"], queues=queues, snapshot_at=0.25)
            result["weights"] = "sub-queues bench.q00..bench.q49 of one parent, weight 1 + i % 10"
            return result

        self._paired("scale_queues", run)

    def scale_queues_parents(self) -> None:
        # the same 50 queues as separate parent queues (running the same code, so the agent
        # may give them one pool: the result's capacity.children says how many children ran)
        queues = [(f"p{i:02d}", 1 + i % 10) for i in range(50)]
        result, _ = self._drain("parents50", self.sizes["queues50"], queues=queues, snapshot_at=0.25)
        result["weights"] = "parent queues p00..p49, weight 1 + i % 10"
        self.runs["scale_queues_parents"] = result

    def scale_payload(self) -> None:
        result, _ = self._drain("payload", self.sizes["big"], task_type="size", kind="big", min_rate=50)
        result["mb_per_s"] = round(result["tasks_per_s"] * 100_000 / 1e6, 1) if result["tasks_per_s"] else None
        self.runs["scale_payload"] = result

    def one_shot(self) -> None:
        """one_shot by fork (the default: a zygote forks each task's process), then by exec
        (a fresh interpreter per task) in the same minutes: the ratio is issue 20's."""
        startup = agent_runs.startup_costs(self.sizes["startup_reps"])
        result, _ = self._drain("one-shot-fork", self.sizes["one_shot_fork"], ONE_SHOT_FORK,
                                app=SYNC_APP + " --once", mode="one_shot", min_rate=5)
        executed, _ = self._drain("one-shot-exec", self.sizes["one_shot"], ONE_SHOT_EXEC,
                                  app=SYNC_APP + " --once", mode="one_shot", min_rate=5)
        result["startup"] = startup
        result["exec"] = executed
        if result.get("tasks_per_s") and executed.get("tasks_per_s"):
            result["fork_over_exec"] = round(result["tasks_per_s"] / executed["tasks_per_s"], 2)
        self.runs["one_shot"] = result

    def dashboard(self) -> None:
        """Search, bulk retry and drain-cost timings of the dashboard (bench/dashboard.py)."""
        self.runs["dashboard"] = dashboard_bench.run(self.h, self.args.mode, self._drain, ASYNC_128, ASYNC_APP)

    def tracing(self) -> None:
        """Tracing off against the tree from before tracing, paired no-op drains
        (bench/tracing.py; issue 19: nothing measurable lost)."""
        out = self.runs["tracing"] = tracing_bench.run(self.h, self.args.mode)
        if "skipped" in out:
            print(f"   tracing: skipped: {out['skipped']}", flush=True)
            return
        print(f"   tracing off / before tracing ({out['before_commit']}), {out['pairs']} pairs of "
              f"{out['n']:,} no-op tasks: throughput {out['tasks_per_s_off_over_before']} "
              f"(median {out['median_tasks_per_s_off_over_before']}), agent CPU per task "
              f"{out['agent_us_off_over_before']} (median {out['median_agent_us_off_over_before']})",
              flush=True)

    def go_producer(self) -> None:
        """The same no-op tasks written by a Go-default producer (bench/go_producer.py) and by
        our client, drained in turns by one agent each (short-task configuration): the ratio
        of each pair, and its median (issue 20: within 10 %)."""
        n, pairs = self.sizes["go"], self.sizes["go_pairs"]
        drains: dict[str, list[dict]] = {"ours": [], "go": []}
        for i in range(pairs):  # ours, go, go, ours, ...: neither side always runs first
            for who in (("ours", "go") if i % 2 == 0 else ("go", "ours")):
                enqueue = go_producer.enqueue_go if who == "go" else None
                result, _ = self._drain(f"producer-{who}", n, enqueue=enqueue)
                drains[who].append(result)
        ratios = sorted(g["tasks_per_s"] / o["tasks_per_s"] for g, o in zip(drains["go"], drains["ours"], strict=True)
                        if g.get("tasks_per_s") and o.get("tasks_per_s"))
        self.runs["go_producer"] = {
            "n": n, "pairs": pairs, "config": drains["ours"][0]["config"],
            "message": go_producer.message_check(),
            "ours": [_drain_summary(r) for r in drains["ours"]],
            "go": [_drain_summary(r) for r in drains["go"]],
            "go_over_ours": [round(r, 3) for r in ratios],
            "median_go_over_ours": round(ratios[len(ratios) // 2], 3) if ratios else None,
        }

    def mixed(self) -> None:
        """A child with sync and async handlers against a sync-only child, short-task
        configuration, in rounds (sync-only, mixed sync, mixed async): the ratios of each round
        and their medians (issue 20: sync >= 0.9, async >= 0.75 of the sync-only child)."""
        n, rounds = self.sizes["mixed"], self.sizes["mixed_rounds"]
        runs: dict[str, list[dict]] = {"sync_only": [], "mixed_sync": [], "mixed_async": []}
        for _ in range(rounds):
            for name, app, task in (("sync_only", SYNC_APP, "noop"), ("mixed_sync", MIXED_APP, "noop"),
                                    ("mixed_async", MIXED_APP, "noop_async")):
                result, _ = self._drain(f"mixed-{name}", n, app=app, task_type=task)
                runs[name].append(result)
        out: dict = {"n": n, "rounds": rounds, "config": runs["sync_only"][0]["config"]}
        for name in runs:
            out[name] = [_drain_summary(r) for r in runs[name]]
        for name in ("mixed_sync", "mixed_async"):
            ratios = sorted(m["tasks_per_s"] / o["tasks_per_s"] for m, o in zip(runs[name], runs["sync_only"], strict=True)
                            if m.get("tasks_per_s") and o.get("tasks_per_s"))
            out[f"{name}_over_sync_only"] = round(ratios[len(ratios) // 2], 3) if ratios else None
        self.runs["mixed"] = out

    def fleet(self) -> None:
        """1, 8, 16 and 32 agents on one Redis (bench/fleet.py)."""
        self.runs["fleet"] = fleet.run_fleet(self.h, **self.sizes["fleet"])

    def micro(self) -> None:
        self.runs["micro"] = micro.run_micro()

    def profile(self) -> None:
        # long enough for a few thousand samples: about 10 s of draining
        expected = (self.runs.get("drain_short") or {}).get("tasks_per_s") or 20_000
        n = self.args.n or min(1_000_000, max(self.sizes["short"], int(expected * 10)))
        seconds = min(30.0, max(2.0, n / expected))
        out: dict = {"tool": self.args.profile, "n": n}
        if self.args.profile == "cprofile":
            self.h.profile_with = "cprofile"
            try:
                result, _ = self._drain("short-cprofile", n)
            finally:
                self.h.profile_with = ""
            out["drain_under_profiler"] = result
            out["agent"] = profiling.summarize_pstats(self.h.logdir / "agent-short-cprofile.pstats")
            self.runs["profile"] = out
            return
        if self.args.profile == "syscalls":
            self._count_syscalls(out, n)
            return
        binary = peers.py_spy()
        if binary is None:
            peers.ensure_venv(self.h.logdir / "peers-pip.log")
            binary = peers.py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed in bench/.venv-peers; try --profile cprofile")
        spies: dict = {}

        def attach(agent) -> None:
            spies["agent"] = profiling.Spy(self.h, binary, agent.pid, "agent", seconds)
            children = agent.task_child_pids()
            if children:
                spies["child"] = profiling.Spy(self.h, binary, children[0], "child", seconds)

        try:
            result, _ = self._drain("short-py-spy", n, on_running=attach)
            out["drain_under_profiler"] = result
        finally:
            for who, spy in spies.items():
                out[who] = spy.finish()
        self.runs["profile"] = out


    def _count_syscalls(self, out: dict, n: int) -> None:
        if profiling.perf_binary() is None:
            raise RuntimeError("perf is not installed; --profile syscalls needs it")
        counters: dict = {}

        def attach(agent) -> None:
            counters["agent"] = profiling.SyscallCount(self.h, agent.pid, "agent")
            children = agent.task_child_pids()
            if children:
                counters["child"] = profiling.SyscallCount(self.h, children[0], "child")

        try:
            result, _ = self._drain("short-syscalls", n, on_running=attach)
            out["drain_under_profiler"] = result
        finally:
            for who, counter in counters.items():
                out[who] = counter.finish(n)
        self.runs["profile"] = out


def _drain_summary(result: dict) -> dict:
    keys = ("tasks_per_s", "agent_cpu_us_per_task", "children_cpu_us_per_task", "redis_cpu_us_per_task",
            "other_processes_cpu_util")
    return {k: result.get(k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(report.markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    sections = plan(args)
    sizes = dict(SIZES[args.mode])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS / f"bench-{stamp}-{args.mode}.json"
    logdir = output.with_name(output.stem + "-logs")
    logdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "mode": args.mode, "sizes": sizes,
                 "sections": sections, "machine": machine(), "code": code_identity(),
                 "load_average_before": [round(x, 2) for x in os.getloadavg()]},
        "runs": {}, "errors": {},
    }
    procs = Processes()
    redis = LocalRedis()
    workdir = Path(tempfile.mkdtemp(prefix="rundown-bench-"))
    interrupted = False
    t0 = time.monotonic()
    try:
        with signals_as_interrupt():
            binary = find_redis_server()
            results["meta"]["redis_server"] = redis_version(binary)
            redis.binary = binary
            redis.start()
            assert redis.process is not None
            results["meta"]["redis_port"] = redis.port
            h = Harness(procs, redis.url, redis.process.pid, workdir, logdir)
            suite = Suite(h, args, sizes, results)
            for section in sections:
                suite.run(section)
    except KeyboardInterrupt:
        interrupted = True
        results["interrupted"] = True
        print("\ninterrupted: stopping every process the suite started ...", file=sys.stderr, flush=True)
    finally:
        with uninterruptible():
            procs.stop_all()
            redis.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    results["meta"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results)
    report.write_json(results, output)
    report.print_report(results)
    print(f"\nresults: {output}\nlogs:    {logdir}")
    if interrupted:
        return 130
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
