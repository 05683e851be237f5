"""Every process the suite starts, and a cleanup that stops all of them, even on Ctrl-C.

Each process starts in its own session (so a terminal's Ctrl-C reaches only us, and we stop
them in order). Before a process is stopped its descendants are snapshotted, so children
that live in their own process groups (the agent's task children, Dramatiq's workers) are
killed too if their parent leaves them behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil


@dataclass
class _Entry:
    proc: subprocess.Popen
    name: str
    log: IO[bytes] | None
    known: dict[int, float] = field(default_factory=dict)  # descendant pid -> create_time


class Processes:
    """A registry of started processes; ``stop_all()`` is safe to call more than once."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], *, name: str, log_path: Path | None = None,
              env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.Popen:
        log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in stop()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL,
                stdout=log if log else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True)
        except BaseException:
            if log:
                log.close()
            raise
        with self._lock:
            self._entries.append(_Entry(proc, name, log))
        return proc

    def _entry(self, proc: subprocess.Popen) -> _Entry | None:
        with self._lock:
            return next((e for e in self._entries if e.proc is proc), None)

    def note_descendants(self, proc: subprocess.Popen) -> list[psutil.Process]:
        """Remember ``proc``'s current descendants (so cleanup can find orphans); returns them."""
        entry = self._entry(proc)
        try:
            found = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        if entry is not None:
            for child in found:
                with contextlib.suppress(psutil.Error):
                    entry.known[child.pid] = child.create_time()
        return found

    def stop(self, proc: subprocess.Popen, grace: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal ``proc``, wait up to ``grace`` s, then kill it, its group and its descendants."""
        entry = self._entry(proc)
        if entry is not None:
            self.note_descendants(proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if entry is not None:
            _kill_leftovers(entry.known)
            if entry.log:
                entry.log.close()
            with self._lock:
                self._entries.remove(entry)
        return proc.returncode

    def stop_all(self, grace: float = 5.0) -> None:
        with self._lock:
            entries = list(reversed(self._entries))
        for entry in entries:
            with contextlib.suppress(Exception):
                self.stop(entry.proc, grace)


def _kill_leftovers(known: dict[int, float]) -> None:
    """Kill descendants that outlived their parent (checked by create time against pid reuse)."""
    alive = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.01:
                alive.append(p)
        except psutil.Error:
            continue
    if not alive:
        return
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=3)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=3)


def wait_until(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(interval)


@contextlib.contextmanager
def signals_as_interrupt():
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so ``finally`` cleanup runs (SIGINT
    too, since a shell starts background jobs with it ignored)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def uninterruptible():
    """Ignore Ctrl-C (and SIGTERM) while cleaning up; every wait inside is bounded."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
