"""The chaos suite's tools: a restartable Redis with AOF, a fleet of real agent processes, the
record file every task run appends to, and the report table.

Every scenario runs real ``rundown-agent`` processes (``tests/agentproc.py``) with the task code
of ``apps/chaos_worker.py`` against its own ``redis-server``; nothing is mocked and every timing
is the product's (10 s leases of our own, recovered 2 s after they expire and re-run at once;
asynq's 30 s rules for leases other servers write).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import redis

from agent.broker import keys
from agent.local_redis import LocalRedis
from tests.agentproc import AgentProcess, local_config

APPS = Path(__file__).parent / "apps"
REPORTS: list[Report] = []  # printed by tests/conftest.py at the end of the run


# -- waiting -------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1,
               what: str = "condition") -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not met within {timeout:.0f}s")
        time.sleep(interval)


# -- Redis that survives a restart ---------------------------------------------------------

class ChaosRedis:
    """A redis-server with AOF (fsync on every write) that can be killed and started again on
    the same port and data directory."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.server = LocalRedis(workdir=str(workdir), extra_args=[
            "--appendonly", "yes", "--appendfsync", "always"])

    def start(self) -> ChaosRedis:
        self.server.start()
        return self

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        proc = self.server.process
        assert proc is not None
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        self.server.process = None

    def restart(self) -> None:
        self.server.start(timeout=30)

    def stop(self) -> None:
        self.server.stop()


# -- agents --------------------------------------------------------------------------------

@dataclass
class AgentSlot:
    """One agent of the fleet across its restarts (each start is a new process)."""

    name: str
    config: Path
    port: int
    log: Path
    process: AgentProcess | None = None
    pids: list[int] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)
    start_seconds: list[float] = field(default_factory=list)


class Fleet:
    """Real agent processes over one record file."""

    def __init__(self, tmp: Path, record: Path) -> None:
        self.tmp = tmp
        self.record = record
        self.agents: dict[str, AgentSlot] = {}

    def add(self, name: str, redis_url: str, *, queues=("default",), concurrency: int = 4,
            processes: int | None = None, shutdown_timeout: str = "5s", env: dict | None = None,
            **deployment) -> AgentSlot:
        """An agent with one child process per slot (task_sdk runs one sync handler at a time
        per child), so ``concurrency`` tasks really run at once."""
        processes = processes or concurrency
        deployment.setdefault("max_in_flight_per_child", 1)
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        extra = {"RECORD_FILE": str(self.record), "AGENT_NAME": name, **(env or {})}
        config, port = local_config(folder, redis_url, list(queues), concurrency=concurrency,
                                    startup_cmd="python chaos_worker.py", app_dir=APPS,
                                    extra_env=extra, shutdown_timeout=shutdown_timeout,
                                    processes=processes, **deployment)
        slot = AgentSlot(name, config, port, folder / "agent.log")
        self.agents[name] = slot
        return slot

    def start(self, name: str, timeout: float = 60.0) -> AgentSlot:
        slot = self.agents[name]
        began = time.monotonic()
        slot.process = AgentProcess(slot.config, slot.port, slot.log).start(timeout)
        slot.start_seconds.append(time.monotonic() - began)
        slot.pids.append(slot.process.pid)
        return slot

    def kill(self, name: str) -> float:
        """SIGKILL the agent; returns the time of the kill."""
        slot = self.agents[name]
        assert slot.process is not None
        pid = slot.process.pid
        killed_at = time.time()
        slot.process.kill()
        slot.killed_pids.append(pid)
        slot.process = None
        return killed_at

    def ready(self, name: str) -> bool | None:
        """/readyz of a running agent: True, False, or None when it does not answer."""
        slot = self.agents[name]
        if slot.process is None:
            return None
        try:
            return slot.process.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return None

    def stop_all(self) -> None:
        for slot in self.agents.values():
            if slot.process is not None and slot.process.proc is not None:
                with contextlib.suppress(Exception):
                    slot.process.stop(timeout=30)
                if slot.process.proc.poll() is None:
                    slot.process.kill()
                slot.process = None

    def output(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log.read_text(errors='replace')[-4000:]}"
                         for s in self.agents.values() if s.log.exists())


# -- the record file -----------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    task_id: str
    agent_pid: int
    at: float
    crash: bool


def read_runs(record: Path) -> list[Run]:
    if not record.exists():
        return []
    runs = []
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            runs.append(Run(parts[0], int(parts[1]), float(parts[2]), len(parts) > 3))
    return runs


def runs_by_task(runs: Iterable[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        out[run.task_id].append(run)
    return out


def duplicates(runs: Iterable[Run]) -> int:
    return sum(n - 1 for n in Counter(r.task_id for r in runs).values())


# -- queue state ---------------------------------------------------------------------------

def queue_counts(client: redis.Redis, queue: str = "default") -> dict[str, int]:
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(keys.pending(queue))
        pipe.llen(keys.active(queue))
        pipe.zcard(keys.lease(queue))
        pipe.zcard(keys.scheduled(queue))
        pipe.zcard(keys.retry(queue))
        pipe.zcard(keys.archived(queue))
        pipe.zcard(keys.completed(queue))
        values = pipe.execute()
    return dict(zip(("pending", "active", "lease", "scheduled", "retry", "archived", "completed"),
                    values, strict=True))


def completed_ids(client: redis.Redis, queue: str = "default") -> set[str]:
    return {m.decode() for m in client.zrange(keys.completed(queue), 0, -1)}


# -- readiness sampling --------------------------------------------------------------------

class ReadinessProbe:
    """Polls /readyz of some agents in a thread; keeps (time, name, ready) samples."""

    def __init__(self, fleet: Fleet, names: Iterable[str], interval: float = 0.1) -> None:
        self.fleet, self.names, self.interval = fleet, list(names), interval
        self.samples: list[tuple[float, str, bool | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="readiness-probe")

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.names:
                self.samples.append((time.time(), name, self.fleet.ready(name)))
            self._stop.wait(self.interval)

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, name: str, value: bool, after: float) -> float | None:
        for at, who, ready in list(self.samples):
            if who == name and at >= after and ready is value:
                return at
        return None


# -- the report ----------------------------------------------------------------------------

@dataclass
class Report:
    scenario: str
    scale: str
    agents: int
    tasks: int
    events: str  # what was done to the system: "20 SIGKILL", "1 Redis restart", ...
    lost: int
    duplicates: int
    recovery: str  # the recovery times, e.g. "max 98.1 s after a kill"
    wall_seconds: float
    notes: str = ""

    def row(self) -> str:
        return (f"| {self.scenario} ({self.scale}) | {self.agents} | {self.tasks} | {self.events} | "
                f"{self.lost} | {self.duplicates} | {self.recovery} | {self.wall_seconds:.0f} s | "
                f"{self.notes} |")


HEADER = ("| scenario | agents | tasks | events | lost | duplicates | recovery | wall time | notes |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def table(reports: Iterable[Report]) -> str:
    return "\n".join([HEADER, *(r.row() for r in reports)])


def publish(report: Report) -> None:
    """Keep the report for the end-of-run table; also append it to $CHAOS_REPORT (JSON lines)."""
    REPORTS.append(report)
    target = os.environ.get("CHAOS_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps(asdict(report)) + "\n")
    print("\n" + table([report]))
