"""Children and all their descendants never outlive the agent.

Three layers, each covering what the previous one misses:

* **Marks.** Every child gets ``RUNDOWN_AGENT_MARK=<agent token>`` and
  ``RUNDOWN_CHILD_MARK=<agent token>.<serial>`` in its environment (``ProcessMarks``). Its
  descendants inherit them, whatever session or process group they move to, so
  ``find_marked`` / ``kill_marked`` find them by reading ``/proc/<pid>/environ``: all of one
  agent's processes (the token) or one child's (its key). Used after a child exits (its
  ``setsid()`` descendants, which ``killpg`` on the child's group misses) and at agent exit.
* **A reaper process** (``Reaper``), started by the agent: its own session, deaf to SIGINT,
  SIGTERM and SIGHUP, blocked reading a pipe whose write end only the agent holds. When the
  agent exits for any reason, SIGKILL included, the read returns end-of-file and the reaper
  kills every process carrying the agent's token.
* **PR_SET_PDEATHSIG** (``pdeathsig_preexec``): the kernel SIGKILLs a direct child the moment
  the agent dies, without waiting for the reaper's scan.

Marking is cooperative: a descendant started with a fresh environment (``env -i``, a
``subprocess`` call given ``env={...}`` that does not copy ``os.environ``) or one that
overwrites its environment block (``setproctitle``) no longer carries the mark. Only a
cgroup (v2 ``cgroup.kill``) is airtight. Linux only: elsewhere the scan finds nothing and
the preexec helper does nothing.

Run as ``python -I -S <this file> <token> [sweep seconds]`` (what ``Reaper.start`` does) the
module is the reaper process, so it imports nothing but the standard library at its top
level (about 10 ms of imports). Not ``-m agent.supervisor.reaper``: that goes through
``agent/supervisor/__init__.py``, which loads the whole supervisor (about 0.2 s); ``-I``
keeps this file's directory off ``sys.path`` and ignores ``PYTHON*`` variables, ``-S``
skips site-packages. (``-m`` remains the fallback when this module is not a plain file.)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

AGENT_MARK_VAR = "RUNDOWN_AGENT_MARK"
"""Carries the agent run's token: every process of the agent's children, at any depth."""
CHILD_MARK_VAR = "RUNDOWN_CHILD_MARK"
"""Carries ``<token>.<serial>``: one child process and everything it starts."""

SWEEP_SECONDS = 2.0
"""How long ``kill_marked`` keeps scanning for marked processes (they may fork meanwhile)."""

_AGENT_PREFIX = b"\0" + AGENT_MARK_VAR.encode() + b"="
_CHILD_PREFIX = b"\0" + CHILD_MARK_VAR.encode() + b"="
_TOKEN_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
_PR_SET_PDEATHSIG = 1
_STOP = b"stop\n"  # the last thing the agent writes to the reaper on a clean stop


def _valid_token(token: str) -> bool:
    return 8 <= len(token) <= 64 and set(token) <= _TOKEN_CHARS


class ChildMarks:
    """The marks of one child: ``key`` (for ``kill_marked``) and ``env`` (to merge into the
    child's environment, after everything else so nothing overrides it)."""

    __slots__ = ("env", "key")

    def __init__(self, key: str, env: dict[str, str]) -> None:
        self.key = key
        self.env = env

    def __repr__(self) -> str:
        return f"ChildMarks(key={self.key!r})"


class ProcessMarks:
    """The marks of one agent run: a random ``token`` and a serial number per child."""

    def __init__(self, token: str | None = None) -> None:
        token = os.urandom(8).hex() if token is None else token
        if not _valid_token(token):
            raise ValueError(f"a mark token is 8-64 characters of [A-Za-z0-9_-], got {token!r}")
        self.token = token
        self._serial = itertools.count(1)

    def for_child(self) -> ChildMarks:
        """The marks for the next child to be spawned (a new key each call)."""
        key = f"{self.token}.{next(self._serial)}"
        return ChildMarks(key, {AGENT_MARK_VAR: self.token, CHILD_MARK_VAR: key})


# -- finding ------------------------------------------------------------------------------


def _environ(pid: int, uid: int) -> bytes | None:
    """The environment block of ``pid`` if it is a live process of ``uid`` (None otherwise:
    gone, a zombie, another user's, unreadable)."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != uid:
            return None
        chunks = [b"\0"]  # a leading separator: every variable is then preceded by one
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:  # ESRCH: it exited (or is a zombie) between open and read
        return None
    finally:
        os.close(fd)


def _value(block: bytes, prefix: bytes) -> bytes | None:
    start = block.find(prefix)
    if start < 0:
        return None
    start += len(prefix)
    end = block.find(b"\0", start)
    return block[start:] if end < 0 else block[start:end]


def _carries(block: bytes | None, marks: frozenset[bytes]) -> bool:
    if block is None:
        return False
    return _value(block, _AGENT_PREFIX) in marks or _value(block, _CHILD_PREFIX) in marks


def _wanted(marks: Iterable[str]) -> frozenset[bytes]:
    wanted = frozenset(m.encode() for m in marks)
    for mark in wanted:
        token, _, serial = mark.partition(b".")
        if not _valid_token(token.decode()) or (serial and not serial.isdigit()):
            raise ValueError(f"not an agent token or child key: {mark.decode()!r}")
    return wanted


def find_marked(*marks: str, exclude: Iterable[int] = ()) -> list[int]:
    """The live processes of our uid whose environment carries one of ``marks``: an agent
    token (``RUNDOWN_AGENT_MARK``: all of that agent's processes) or a child key
    (``RUNDOWN_CHILD_MARK``: one child and its descendants).

    Never the calling process, nor any pid in ``exclude``. Processes that cannot be read
    (another user's, vanished meanwhile, zombies) are skipped. A snapshot: a pid may be gone,
    or even reused, by the time the caller looks at it (``kill_marked`` guards against that).
    """
    wanted = _wanted(marks)
    if not wanted:
        return []
    skip = {os.getpid(), *exclude}
    uid = os.getuid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: not Linux
        return []
    for name in names:
        if name.isdigit():
            pid = int(name)
            if pid not in skip and _carries(_environ(pid, uid), wanted):
                found.append(pid)
    return found


# -- killing ------------------------------------------------------------------------------


def _kill_if_marked(pid: int, wanted: frozenset[bytes], uid: int) -> bool:
    """SIGKILL ``pid`` if it (still) carries a mark, without ever hitting a reused pid.

    A pidfd pins the process found; the mark is read again, then the signal goes through the
    pidfd. If that process has been reaped meanwhile the signal fails (ESRCH), so a process
    that inherited its pid is never signalled. Without pidfds (before Linux 5.3) a plain
    ``kill`` right after the re-read leaves a window of microseconds.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None
    try:
        if not _carries(_environ(pid, uid), wanted):
            return False
        if pidfd is None:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def kill_marked(
    *marks: str, timeout: float = SWEEP_SECONDS, exclude: Iterable[int] = ()
) -> list[int]:
    """SIGKILL every process carrying one of ``marks`` (see ``find_marked``), scanning again
    until a scan finds none or ``timeout`` seconds pass (a process may fork while we kill).

    Several marks are matched in one scan, so callers can batch child keys. Returns the
    distinct pids signalled. Blocks: a scan costs about 1 ms per 100 processes on the
    machine, and a process that will not die (uninterruptible sleep) holds it for
    ``timeout``; from the event loop, run it with ``asyncio.to_thread``.
    """
    wanted = _wanted(marks)
    if not wanted:
        return []
    uid = os.getuid()
    deadline = time.monotonic() + timeout
    killed: dict[int, None] = {}
    pause = 0.002
    while True:
        found = find_marked(*marks, exclude=exclude)
        if not found:
            break
        for pid in found:
            if _kill_if_marked(pid, wanted, uid):
                killed[pid] = None
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)  # the killed need a moment to exit before the next scan
        pause = min(pause * 2, 0.05)
    return list(killed)


# -- direct children: the kernel's parent-death signal -------------------------------------


def pdeathsig_preexec(then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when its parent dies
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), then running ``then`` (another preexec, such as
    ``launch.rlimit_setter``). Build it in the spawning process, just before the spawn: it
    records that process's pid, and the child kills itself at once if its parent is already
    another one (the agent died between fork and prctl). Returns ``then`` off Linux.

    Caveats: the signal fires when the parent *thread* that forked exits, not the process,
    so spawn from a thread that lives as long as the agent (asyncio forks in the event loop
    thread, the main thread). It is not inherited by the child's own children (the marks
    cover those) and is cleared when the child executes a set-user-ID program. A
    ``preexec_fn`` also makes ``subprocess`` fork instead of using ``vfork``, which costs
    more the larger the agent is (measured: +1 ms per spawn at 40 MB RSS, +12 ms at 340 MB).
    """
    if not sys.platform.startswith("linux"):
        return then
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return then
    option = ctypes.c_int(_PR_SET_PDEATHSIG)
    sigkill = ctypes.c_ulong(int(signal.SIGKILL))
    zero = ctypes.c_ulong(0)
    parent = os.getpid()

    def preexec() -> None:  # runs in the forked child: plain system calls only
        prctl(option, sigkill, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
        if then is not None:
            then()

    return preexec


# -- the reaper process ---------------------------------------------------------------------


class Reaper:
    """The watchdog process that kills the agent's marked processes once the agent is gone.

    ``start()`` at agent start-up, before the first child; ``stop()`` at clean exit, after
    the pools have stopped. If the agent dies without ``stop()`` (SIGKILL, a crash), the
    reaper notices the end of its pipe and does the same sweep. The reaper does not carry
    the mark and runs in its own session, so neither ``killpg`` on a child nor a Ctrl-C
    reaches it.
    """

    def __init__(self, token: str, *, sweep_seconds: float = SWEEP_SECONDS) -> None:
        if not _valid_token(token):
            raise ValueError(f"not an agent token: {token!r}")
        self.token = token
        self.sweep_seconds = sweep_seconds
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 5.0) -> None:
        """Spawn the reaper and wait (``ready_timeout``) until it has its signals ignored.

        The pipe's write end stays in this process only: it is close-on-exec, and the
        children are spawned with ``close_fds``. (A bare ``os.fork`` in the agent would
        inherit it, and then the reaper would wait for that fork too.)
        """
        if self._proc is not None:
            raise RuntimeError("the reaper was already started")
        script = os.path.abspath(__file__)
        if os.path.isfile(script):
            argv = [sys.executable, "-I", "-S", script]
        else:  # not a plain file (a zip): the heavy import path still works
            argv = [sys.executable, "-m", __spec__.name if __spec__ else "agent.supervisor.reaper"]
        proc = subprocess.Popen(
            [*argv, self.token, repr(self.sweep_seconds)],
            stdin=subprocess.PIPE,  # the lifeline: its write end is proc.stdin, ours alone
            stdout=subprocess.PIPE,  # one "ready" line
            stderr=None,
            cwd="/",  # hold no directory busy
            close_fds=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], ready_timeout)
            line = proc.stdout.readline() if ready else b""
        finally:
            proc.stdout.close()
        if line != b"ready\n":
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the reaper process did not start (exit code {proc.returncode}, "
                f"within {ready_timeout:g}s)"
            )
        self._proc = proc

    def stop(self, timeout: float | None = None) -> bool:
        """Close the lifeline and wait for the reaper's sweep (at most ``timeout``, default
        ``sweep_seconds`` + 1). True when the sweep is done. If the reaper died early, the
        sweep is done here instead. Blocks: from the event loop use ``asyncio.to_thread``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return True
        if timeout is None:
            timeout = self.sweep_seconds + 1.0
        if proc.poll() is not None:
            kill_marked(self.token, timeout=min(timeout, self.sweep_seconds))
            return True
        assert proc.stdin is not None
        try:  # "stop": a clean exit, which the reaper need not report
            proc.stdin.write(_STOP)
            proc.stdin.close()
        except OSError:  # it has just died: the end of the pipe is all it could want
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


_marks: ProcessMarks | None = None


def process_marks() -> ProcessMarks:
    """This agent process's marks (one token per agent run)."""
    global _marks
    if _marks is None:
        _marks = ProcessMarks()
    return _marks


class DescendantSweeper:
    """Kills what exited children left behind (``setsid()`` descendants that ``killpg``
    misses), by their child keys: one ``/proc`` scan for every key collected, at most one
    scan per ``interval`` seconds, in a worker thread (about 1 ms per 100 processes)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._keys: list[str] = []
        self._scheduled = False

    def child_exited(self, key: str) -> None:
        import asyncio

        self._keys.append(key)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        import asyncio

        keys, self._keys, self._scheduled = self._keys, [], False
        task = asyncio.get_running_loop().run_in_executor(None, kill_marked, *keys)
        task.add_done_callback(lambda done: done.exception())  # errors: nothing to do


sweeper = DescendantSweeper()


def _main(argv: list[str]) -> int:
    """The reaper process: ``<token> [sweep seconds]``."""
    if not 1 <= len(argv) <= 2 or not _valid_token(argv[0]):
        sys.stderr.write("usage: reaper.py <agent token> [sweep seconds]\n")
        return 2
    token = argv[0]
    sweep = float(argv[1]) if len(argv) == 2 else SWEEP_SECONDS
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    os.write(1, b"ready\n")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the agent closed its end: nothing more to say there
    os.close(devnull)
    said = b""
    while True:  # end-of-file: the agent stopped us, exited or was killed
        try:
            chunk = os.read(0, 4096)
        except OSError:
            break
        if not chunk:
            break
        said = (said + chunk)[-len(_STOP) :]
    killed = kill_marked(token, timeout=sweep)
    if killed and said != _STOP:
        with contextlib.suppress(OSError):
            sys.stderr.write(
                f"rundown-agent reaper: the agent exited without stopping its processes; "
                f"killed {len(killed)}: {' '.join(map(str, killed))}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
