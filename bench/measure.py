"""CPU, memory and latency arithmetic: snapshots of a process tree, percentiles."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def reaped_children_cpu(p: psutil.Process) -> float:
    """CPU of children the process has waited for (rusage children: one_shot children)."""
    t = p.cpu_times()
    return t.children_user + t.children_system


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) in bytes; 0 where /proc is not available."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class TreeSample:
    """CPU seconds and RSS of one process and each of its live descendants, at one instant."""

    t: float
    cpu: float
    reaped_cpu: float
    rss: int
    peak_rss: int
    children_cpu: dict[int, float] = field(default_factory=dict)
    children_rss: dict[int, int] = field(default_factory=dict)


def sample_tree(pid: int) -> TreeSample:
    p = psutil.Process(pid)
    with p.oneshot():
        s = TreeSample(time.perf_counter(), cpu_seconds(p), reaped_children_cpu(p),
                       p.memory_info().rss, peak_rss(pid))
    for child in p.children(recursive=True):
        with contextlib.suppress(psutil.Error), child.oneshot():
            # with what it reaped: the one_shot zygote's forks are its children, not ours
            s.children_cpu[child.pid] = cpu_seconds(child) + reaped_children_cpu(child)
            s.children_rss[child.pid] = child.memory_info().rss
    return s


def children_cpu_delta(before: TreeSample, after: TreeSample) -> float:
    """CPU used by descendants between two samples: live ones (present in both, or new)
    plus those reaped meanwhile (rusage children)."""
    live = sum(after.children_cpu[pid] - before.children_cpu.get(pid, 0.0) for pid in after.children_cpu)
    return live + (after.reaped_cpu - before.reaped_cpu)


def process_cpu(pid: int) -> float:
    try:
        return cpu_seconds(psutil.Process(pid))
    except psutil.Error:
        return 0.0


def system_busy_seconds() -> float:
    """CPU seconds spent by all processes on the machine (all CPUs), excluding idle/iowait."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def own_cpu() -> float:
    """CPU of this process (the harness: its polling and psutil reads)."""
    return cpu_seconds(psutil.Process())


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {"samples": len(ms), "p50_ms": round(percentile(ms, 50), 3),
            "p90_ms": round(percentile(ms, 90), 3), "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else math.nan,
            "mean_ms": round(sum(ms) / len(ms), 3) if ms else math.nan}


def code_identity() -> dict:
    """The commit, the files changed since it, and a hash of the agent's and the SDK's
    sources as measured (the working tree may differ from the commit)."""
    root = Path(__file__).resolve().parent.parent
    out: dict = {"commit": "", "dirty": [], "source_hash": ""}
    with contextlib.suppress(Exception):
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=5, cwd=root).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "agent", "task_sdk"],
                                capture_output=True, text=True, timeout=5, cwd=root).stdout
        out["dirty"] = [line[3:] for line in status.splitlines()]
    digest = hashlib.sha256()
    for package in ("agent", "task_sdk"):
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    out["source_hash"] = digest.hexdigest()[:12]
    return out


def machine() -> dict:
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cpus": psutil.cpu_count(logical=False),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
