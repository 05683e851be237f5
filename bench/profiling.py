"""Where the agent's CPU goes during a drain: py-spy (from bench/.venv-peers) attached to the
agent and to its child, from outside; nothing in the agent is changed. ``--profile cprofile``
instead runs the agent under ``python -m cProfile`` (heavier, but needs no ptrace);
``--profile syscalls`` counts the system calls of the agent and its child with ``perf stat``
(on a virtual machine a wake-up of another process is the dearest thing a task does).
"""

from __future__ import annotations

import pstats
import re
import shutil
import signal
from collections import Counter
from pathlib import Path

from bench.agent_runs import Harness

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


_REPO = str(Path(__file__).resolve().parent.parent) + "/"


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", _REPO):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    parts = Path(path).parts
    return "/".join(parts[-3:]) if len(parts) > 3 else path


def _label(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('func')} ({short_path(m.group('file'))})"


class Spy:
    """``py-spy record`` on one process, raw (collapsed stacks) output."""

    def __init__(self, h: Harness, binary: Path, pid: int, name: str, seconds: float,
                 rate: int = 250) -> None:
        self.h = h
        self.out = h.logdir / f"py-spy-{name}.txt"
        argv = [str(binary), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                "--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(self.out)]
        self.proc = h.procs.spawn(argv, name=f"py-spy-{name}", log_path=h.logdir / f"py-spy-{name}.log")

    def finish(self) -> dict:
        # SIGINT makes py-spy write what it has and exit
        self.h.procs.stop(self.proc, grace=20.0, sig=signal.SIGINT)
        return summarize_collapsed(self.out)


def summarize_collapsed(path: Path, top: int = 40) -> dict:
    if not path.exists():
        return {"error": f"py-spy wrote no output ({path.name}); see its log"}
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for label in set(frames):
            inclusive[label] += count
    if not total:
        return {"samples": 0}

    def pct(c: Counter) -> list:
        return [{"function": k, "percent": round(v * 100 / total, 1)} for k, v in c.most_common(top)]

    return {"samples": total, "file": path.name, "self": pct(self_counts), "inclusive": pct(inclusive)}


def summarize_pstats(path: Path, top: int = 25) -> dict:
    if not path.exists():
        return {"error": f"no cProfile output at {path.name}"}
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1.0  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{func} ({short_path(file)}:{line})"))
    rows.sort(reverse=True)
    return {"total_seconds": round(total, 3), "file": path.name,
            "self": [{"function": f, "percent": round(tt * 100 / total, 1), "calls": nc,
                      "cumulative_percent": round(ct * 100 / total, 1)} for tt, ct, nc, f in rows[:top]]}


SYSCALLS = ("read", "write", "sendto", "recvfrom", "epoll_wait", "futex")


def perf_binary() -> str | None:
    return shutil.which("perf")


class SyscallCount:
    """``perf stat`` of a few system calls of one process (all its threads), until stopped."""

    def __init__(self, h: Harness, pid: int, name: str) -> None:
        self.out = h.logdir / f"perf-{name}.csv"
        self.h = h
        events = ",".join(f"syscalls:sys_enter_{c}" for c in SYSCALLS)
        argv = [perf_binary() or "perf", "stat", "-x", ",", "-e", events, "-p", str(pid),
                "-o", str(self.out)]
        self.proc = h.procs.spawn(argv, name=f"perf-{name}", log_path=h.logdir / f"perf-{name}.log")

    def finish(self, tasks: int) -> dict:
        self.h.procs.stop(self.proc, grace=10.0, sig=signal.SIGINT)
        if not self.out.exists():
            return {"error": f"perf wrote no output ({self.out.name}); see its log"}
        counts: dict = {}
        for line in self.out.read_text(errors="replace").splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
                counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
        if not counts:
            return {"error": f"perf counted nothing (permissions?); see {self.out.name}"}
        return {"per_task": {k: round(v / max(tasks, 1), 4) for k, v in counts.items()},
                "total": counts}
