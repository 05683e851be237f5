"""The dashboard section of the benchmark suite (``python -m bench --only dashboard``).

Three timings, against a real ``rundown-server`` process (uvicorn) on the suite's Redis:

* **search**: the first page of a task search over ``search_n`` tasks in one queue (full mode:
  1,000,000), through ``GET /dashboard/tasks`` as a browser asks for it (server-side search and
  HTML rendering included), for an unfiltered search, a state + type filter, a rare ID prefix
  and an error text that 12 tasks match. Target: <= 2 s each.
* **bulk retry**: a failure group of ``group_n`` tasks (full: 10,000), among other failures,
  retried with one ``POST /dashboard/failures/action``. Target: <= 5 s.
* **drain cost**: paired drains of no-op tasks by an agent at concurrency 128 (one async child),
  without the server, then with the server and a viewer polling the overview every 2 s as the
  open page does; the ratio of their rates. Target: >= 0.95 (the dashboard costs <= 5 %). On a
  shared machine two drains differ by more than 5 % on their own, so the server's CPU during
  the drain is also reported as a share of the drain's CPU (agent, children and Redis): the
  cost itself, free of that noise.

Tasks are written straight into Redis with pipelined commands (bench/dashboard_seed.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import httpx
import yaml

from bench.agent_runs import Harness
from bench.dashboard_seed import seed_tasks
from bench.measure import process_cpu
from bench.procs import wait_until

KEY = "bench-dashboard-admin-key"
SIZES = {
    # CI: the search and the bulk retry still run; no drains (two agent starts cost the most)
    "smoke": dict(search_n=5_000, group_n=500, other_failures=500, drain_n=0, pairs=0, reps=1),
    "quick": dict(search_n=200_000, group_n=10_000, other_failures=20_000, drain_n=100_000, pairs=1,
                  reps=3),
    "full": dict(search_n=1_000_000, group_n=10_000, other_failures=50_000, drain_n=300_000, pairs=3,
                 reps=5),
}
TARGETS = {"search_first_page_s": 2.0, "bulk_retry_s": 5.0, "drain_ratio": 0.95}
POLL_EVERY = 2.0  #: what the open overview does (hx-trigger="every 2s")


class DashboardServer:
    """``rundown-server`` as a subprocess serving the bench queues, with an admin key."""

    started = 0

    def __init__(self, h: Harness, queues: list[str]) -> None:
        self.h = h
        DashboardServer.started += 1
        path = h.workdir / "dashboard-queues.yml"
        path.write_text(yaml.safe_dump({
            "api_keys": [{"name": "bench", "key": "${BENCH_DASHBOARD_KEY}", "role": "admin"}],
            "queues": {q: {"deployment": {"git_url": "https://git.example/bench.git",
                                          "startup_cmd": "python worker.py"}} for q in queues}}))
        self.log = h.logdir / f"dashboard-server-{DashboardServer.started}.log"
        self.log.unlink(missing_ok=True)  # a log of an earlier run into the same directory
        self.proc = h.procs.spawn([sys.executable, "-m", "agent.server.cli", "--queues", str(path),
                                   "--redis", h.redis_url, "--listen", "127.0.0.1:0",
                                   "--log-format", "json"], name="dashboard-server", log_path=self.log,
                                  env={**os.environ, "BENCH_DASHBOARD_KEY": KEY})
        self.url = ""

        def announced() -> bool:
            for line in self.log.read_text(errors="replace").splitlines():
                if "listening on" in line:
                    self.url = line.rsplit(" ", 1)[-1].strip()
                    return True
            return False

        wait_until(announced, timeout=30, what="rundown-server listening")
        self.http = httpx.Client(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {KEY}"})

    def stop(self) -> None:
        self.http.close()
        self.h.procs.stop(self.proc, grace=10)


def _timed(http: httpx.Client, method: str, path: str, **kw) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    resp = http.request(method, path, **kw)
    seconds = time.perf_counter() - t0
    resp.raise_for_status()
    return seconds, resp


def search_timings(h: Harness, sizes: dict) -> dict:
    """Seed ``search_n`` tasks in one queue, then time first search pages."""
    r = h.redis()
    r.flushall()
    n, q = sizes["search_n"], "big"
    t0 = time.perf_counter()
    rare = 12
    archived = n // 10
    seed_tasks(r, q, n - 2 * archived, "pending", id_prefix="p", task_type=lambda i: "email:send")
    seed_tasks(r, q, archived, "completed", id_prefix="c", task_type=lambda i: "report")
    seed_tasks(r, q, archived - rare, "archived", id_prefix="a", task_type=lambda i: "email:send",
               error=lambda i: f"SMTP 421 from mx{i % 7}: try again later")
    seed_tasks(r, q, rare, "archived", id_prefix="quota", task_type=lambda i: "email:send",
               error=lambda i: f"DiskQuotaExceeded: user {i} is over quota")
    seed_seconds = time.perf_counter() - t0
    server = DashboardServer(h, [q])
    try:
        cases = {
            "unfiltered": f"/dashboard/tasks?queue={q}",
            "state_and_type": f"/dashboard/tasks?queue={q}&state=completed&type=report",
            "rare_id_prefix": f"/dashboard/tasks?queue={q}&id=quota-",
            "rare_error_text": f"/dashboard/tasks?queue={q}&error=diskquotaexceeded",
        }
        out: dict = {"tasks": n, "seed_seconds": round(seed_seconds, 1), "cases": {}}
        for name, path in cases.items():
            times, rows = [], 0
            for _ in range(sizes["reps"]):
                seconds, resp = _timed(server.http, "GET", path)
                times.append(seconds)
                rows = resp.text.count('class="task"')
            out["cases"][name] = {"first_page_s": round(statistics.median(times), 3),
                                  "max_s": round(max(times), 3), "rows": rows,
                                  "budget_note": "stopped at its scan budget" in resp.text}
        out["worst_s"] = max(c["max_s"] for c in out["cases"].values())
        out["meets_target"] = out["worst_s"] <= TARGETS["search_first_page_s"]
        return out
    finally:
        server.stop()
        r.flushall()
        r.close()


def bulk_retry(h: Harness, sizes: dict) -> dict:
    r = h.redis()
    r.flushall()
    q, n = "failing", sizes["group_n"]
    seed_tasks(r, q, n, "archived", id_prefix="g", task_type=lambda i: "charge",
               error=lambda i: f"card {i} declined by gateway 10.1.2.{i % 250}")
    seed_tasks(r, q, sizes["other_failures"], "archived", id_prefix="o", task_type=lambda i: "charge",
               error=lambda i: f"E{i}: unexpected")
    server = DashboardServer(h, [q])
    try:
        seconds, resp = _timed(server.http, "POST", "/dashboard/failures/action",
                               data={"op": "retry", "queue": q, "type": "charge",
                                     "error": "card <n> declined by gateway <addr>"})
        moved = r.llen(f"asynq:{{{q}}}:pending")
        return {"group": n, "other_failures": sizes["other_failures"], "seconds": round(seconds, 3),
                "moved_to_pending": moved, "answer": resp.text.strip()[-80:],
                "meets_target": seconds <= TARGETS["bulk_retry_s"] and moved == n}
    finally:
        server.stop()
        r.flushall()
        r.close()


class Viewer:
    """An open overview page: GET the fragment every 2 s, as htmx does."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        self.requests = 0
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-viewer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.server.http.get("/dashboard/?fragment=1")
                self.requests += 1
                self.seconds.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                pass
            self._stop.wait(POLL_EVERY)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def drain_cost(h: Harness, sizes: dict, drain, config: dict, app: str) -> dict:
    """Paired drains at concurrency 128: alone, then with the dashboard open (order alternates)."""
    n = sizes["drain_n"]
    if not sizes["pairs"]:
        return {"n": 0, "pairs": [], "ratio_median": None, "server_cpu_share_max": None,
                "meets_target": None, "skipped": "no drains in this mode"}
    pairs = []
    for i in range(sizes["pairs"]):
        pair: dict = {}
        for with_dashboard in ((False, True) if i % 2 == 0 else (True, False)):
            if not with_dashboard:
                pair["alone"] = drain(f"dash-alone-{i}", n, config, app=app)[0]["tasks_per_s"]
                continue
            server = DashboardServer(h, ["bench"])
            viewer = Viewer(server)
            cpu: dict = {}

            def open_page(agent, v=viewer, s=server, c=cpu) -> None:
                c["before"] = process_cpu(s.proc.pid)
                v.start()

            try:
                result = drain(f"dash-open-{i}", n, config, app=app, on_running=open_page)[0]
                server_cpu = process_cpu(server.proc.pid) - cpu["before"]
            finally:
                viewer.stop()
                server.stop()
            pair["with_dashboard"] = result["tasks_per_s"]
            # the server's CPU (polls, sampler) against all the drain's CPU (agent, children, Redis)
            drain_cpu = result["drain_seconds"] * (result["agent_cpu_util"] + result["children_cpu_util"]
                                                   + result["redis_cpu_util"])
            pair["server_cpu_s"] = round(server_cpu, 3)
            pair["server_cpu_share"] = round(server_cpu / drain_cpu, 4) if drain_cpu > 0 else None
            pair["polls"] = viewer.requests
            pair["poll_ms_median"] = round(statistics.median(viewer.seconds) * 1000, 1) if viewer.seconds else None
        pair["ratio"] = round(pair["with_dashboard"] / pair["alone"], 3)
        pairs.append(pair)
    ratio = statistics.median(p["ratio"] for p in pairs)
    shares = [p["server_cpu_share"] for p in pairs if p.get("server_cpu_share") is not None]
    return {"n": n, "config": "concurrency 128, 1 process, async_limit 128, prefetch 0",
            "pairs": pairs, "ratio_median": ratio,
            "server_cpu_share_max": max(shares) if shares else None,
            "meets_target": ratio >= TARGETS["drain_ratio"]}


def run(h: Harness, mode: str, drain, config: dict, app: str) -> dict:
    sizes = SIZES[mode]
    out = {"targets": TARGETS, "sizes": sizes}
    for name, step in (("search", lambda: search_timings(h, sizes)),
                       ("bulk_retry", lambda: bulk_retry(h, sizes)),
                       ("drain_cost", lambda: drain_cost(h, sizes, drain, config, app))):
        t0 = time.monotonic()
        out[name] = step()
        print(f"   dashboard {name}: {_line(name, out[name])} ({time.monotonic() - t0:.0f}s)", flush=True)
    return out


def _line(name: str, result: dict) -> str:
    if name == "search":
        cases = ", ".join(f"{k} {v['first_page_s']}s ({v['rows']} rows)" for k, v in result["cases"].items())
        return f"first page over {result['tasks']:,} tasks: {cases}"
    if name == "bulk_retry":
        return f"{result['moved_to_pending']:,} of a {result['group']:,}-task group retried in {result['seconds']}s"
    if result.get("skipped"):
        return result["skipped"]
    return (f"c=128 drain with the dashboard open: {result['ratio_median']}x the rate alone "
            f"({', '.join(str(p['ratio']) for p in result['pairs'])}); the server's CPU "
            f"<= {100 * (result['server_cpu_share_max'] or 0):.2f}% of the drain's")

