"""Peers measured in the same run: Dramatiq (Redis broker, processes x threads) and arq
(one asyncio worker, ``max_jobs``), installed into their own virtualenv, bench/.venv-peers.

Each peer gets the same tasks as the agent (``noop`` returns a small dict; ``sleep10ms``
blocks for 10 ms, ``sleep50ms`` awaits 50 ms; see bench/peer_apps), enqueued with the peer's
own client before its worker starts; the rate is taken from the first observed progress to the
last, as for the agent. CPU is that of the worker's whole process tree over the same span.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bench.agent_runs import Harness
from bench.measure import children_cpu_delta, own_cpu, process_cpu, sample_tree, system_busy_seconds

BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-peers"
REQUIREMENTS = BENCH_DIR / "peers-requirements.txt"
APPS = BENCH_DIR / "peer_apps"
MARKER = VENV / "bench-requirements.txt"


class PeersUnavailable(RuntimeError):
    pass


def venv_bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_venv(log: Path, timeout: float = 900.0) -> dict:
    """Create (or reuse) the peers' virtualenv; returns the installed versions."""
    wanted = REQUIREMENTS.read_text()
    if not (MARKER.exists() and MARKER.read_text() == wanted and venv_bin("python").exists()):
        with open(log, "ab") as out:
            try:
                if not venv_bin("python").exists():
                    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                                   stdout=out, stderr=subprocess.STDOUT, timeout=300)
                subprocess.run([str(venv_bin("python")), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                               check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            except (subprocess.SubprocessError, OSError) as exc:
                raise PeersUnavailable(f"could not install the peers into {VENV.name} ({exc}); see {log}") from exc
        MARKER.write_text(wanted)
    probe = ("import importlib.metadata as m, json; "
             "print(json.dumps({p: m.version(p) for p in ('dramatiq', 'arq', 'redis', 'hiredis')}))")
    try:
        out = subprocess.run([str(venv_bin("python")), "-c", probe], capture_output=True, text=True,
                             timeout=60, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise PeersUnavailable(f"the peers' virtualenv is broken ({exc}); delete {VENV} and rerun") from exc
    return json.loads(out.stdout)


def py_spy() -> Path | None:
    path = venv_bin("py-spy")
    return path if path.exists() else None


def _env(h: Harness, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"BENCH_REDIS_URL": h.redis_url, "PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def _enqueue(h: Harness, app: str, n: int, env: dict, timeout: float, task: str = "noop") -> float:
    out = subprocess.run([str(venv_bin("python")), app, "enqueue", str(n), task], cwd=APPS, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{app} enqueue failed: {out.stderr.strip()[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def _drain(h: Harness, name: str, n: int, argv: list[str], env: dict,
           remaining: Callable[[redis.Redis], int], min_rate: float = 200.0, stall: float = 30.0) -> dict:
    r = h.redis()
    proc = h.procs.spawn(argv, name=name, log_path=h.logdir / f"{name}.log", env=env, cwd=APPS)
    try:
        deadline = time.monotonic() + 60 + n / min_rate
        t_first = 0.0
        c_first = 0
        before = None
        marks = (0.0, 0.0, 0.0)
        last, last_change = n, time.monotonic()
        while True:
            left = remaining(r)
            now = time.perf_counter()
            if left < n and not t_first:
                t_first, c_first = now, n - left
                h.procs.note_descendants(proc)
                before = sample_tree(proc.pid)
                marks = (process_cpu(h.redis_pid), system_busy_seconds(), own_cpu())
            if left != last:
                last, last_change = left, time.monotonic()
            if left == 0:
                t_last = now
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {h.logdir / (name + '.log')}")
            if time.monotonic() > deadline or time.monotonic() - last_change > stall:
                raise TimeoutError(f"{name}: {left}/{n} tasks left when the run timed out")
            time.sleep(0.005)
        after = sample_tree(proc.pid)
        redis_cpu = process_cpu(h.redis_pid) - marks[0]
        system, own = system_busy_seconds() - marks[1], own_cpu() - marks[2]
        assert before is not None
        seconds = t_last - t_first
        done = n - c_first
        cpu = (after.cpu - before.cpu) + children_cpu_delta(before, after)
        rss = after.rss + sum(after.children_rss.values())
        span = max(after.t - before.t, 1e-9)
        return {"n": n, "drain_seconds": round(seconds, 3),
                "tasks_per_s": round(done / seconds, 1) if seconds > 0 else None,
                "cpu_us_per_task": round(cpu / done * 1e6, 2),
                "redis_cpu_us_per_task": round(redis_cpu / done * 1e6, 2),
                "cpu_util": round(cpu / span, 3), "redis_cpu_util": round(redis_cpu / span, 3),
                "other_processes_cpu_util": round(max(0.0, system - cpu - redis_cpu - own) / span, 3),
                "processes": 1 + len(after.children_rss), "rss_mb": round(rss / 2**20, 1)}
    finally:
        h.procs.stop(proc, grace=15.0)
        r.close()


def run_dramatiq(h: Harness, n: int, processes: int = 2, threads: int = 8, task: str = "noop",
                 asyncio_actors: bool = False) -> dict:
    """``task`` is an actor of dramatiq_noop.py; ``asyncio_actors`` adds Dramatiq's AsyncIO
    middleware (needed by ``async def`` actors)."""
    r = h.redis()
    r.flushall()
    env = _env(h, {"BENCH_DRAMATIQ_ASYNCIO": "1" if asyncio_actors else "0"})
    enqueue_s = _enqueue(h, "dramatiq_noop.py", n, env, timeout=60 + n / 200, task=task)
    msgs = "dramatiq:default.msgs"
    if r.hlen(msgs) != n:
        raise RuntimeError(f"dramatiq: expected {n} messages in {msgs}, found {r.hlen(msgs)}")
    r.close()
    argv = [str(venv_bin("dramatiq")), "dramatiq_noop", "--processes", str(processes),
            "--threads", str(threads), "--path", str(APPS)]
    result = _drain(h, f"dramatiq-{task}", n, argv, env, lambda c: int(c.hlen(msgs)))
    config = f"Redis broker, {processes} processes x {threads} threads"
    if asyncio_actors:
        config += " (AsyncIO middleware)"
    return {"config": config, "running_handlers": processes * threads, "task_type": task,
            "enqueue_per_s": round(n / enqueue_s, 1), **result}


def run_arq(h: Harness, n: int, max_jobs: int = 128, poll_delay: float = 0.5, task: str = "noop") -> dict:
    """``task`` is a function of arq_noop.py (``sleep10ms`` runs its blocking part in a
    thread pool of ``max_jobs`` threads)."""
    r = h.redis()
    r.flushall()
    env = _env(h, {"BENCH_ARQ_MAX_JOBS": str(max_jobs), "BENCH_ARQ_POLL_DELAY": str(poll_delay)})
    enqueue_s = _enqueue(h, "arq_noop.py", n, env, timeout=60 + n / 200, task=task)
    if r.zcard("arq:queue") != n:
        raise RuntimeError(f"arq: expected {n} jobs in arq:queue, found {r.zcard('arq:queue')}")
    r.close()
    argv = [str(venv_bin("python")), "arq_noop.py", "work"]
    result = _drain(h, f"arq-{task}", n, argv, env, lambda c: int(c.zcard("arq:queue")))
    config = f"1 process, max_jobs={max_jobs}, poll_delay={poll_delay}s, keep_result=0"
    if task == "sleep10ms":
        config += f", run_in_executor on {max_jobs} threads"
    return {"config": config, "running_handlers": max_jobs, "task_type": task,
            "enqueue_per_s": round(n / enqueue_s, 1), **result}
