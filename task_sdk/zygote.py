"""The one_shot fork server ("zygote"): import the task module once, fork a process per task.

The agent starts the deployment's command with ``RUNDOWN_ZYGOTE_FD`` naming a Unix
``SOCK_SEQPACKET`` socket. ``run_once()`` then does not serve a task: it (optionally) runs
``@load``, tells the agent whether forking is safe here, and waits for fork requests. Each
request carries the new task process's descriptors (its request and answer pipes, and one
pipe for its output) and its child mark; the zygote forks, and the fork becomes an ordinary one_shot child:
its own session, SIGKILLed by the kernel if the zygote dies (the zygote itself dies with the
agent), the task's rlimits, then ``_serve(once=True)`` and ``os._exit``. The zygote reaps its
forks and reports each exit status on the socket, since the agent is not their parent.

Forking is unsafe once other threads run (a lock held by one of them stays held in the fork
forever), so a zygote that finds threads after import (and after ``@load`` when it is
inherited) says so, and the agent starts each task's process by exec instead.

Messages (JSON, one per datagram): zygote -> agent ``{"fork": true}`` or ``{"fork": false,
"reason": ...}`` first, then ``{"id": n, "pid": p}`` / ``{"id": n, "error": ...}`` per
request and ``{"exit": pid, "code": c}`` (negative: killed by that signal) per fork reaped.
Agent -> zygote ``{"id": n, "mark": key, "as": bytes|null, "cpu": seconds|null}`` with three
descriptors attached: the request pipe, the answer pipe, and the output pipe (fd 1 and 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading

from . import channel as _channel_module
from . import registry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

FD_VARIABLE = "RUNDOWN_ZYGOTE_FD"
"""The zygote's end of its fork-request socket (set by the agent)."""
LOAD_VARIABLE = "RUNDOWN_ZYGOTE_LOAD"
"""``inherit`` (``@load`` runs once in the zygote; forks share its state copy-on-write) or
``per_task`` (each fork runs ``@load``, as an executed one_shot process does)."""
CHILD_MARK_VARIABLE = "RUNDOWN_CHILD_MARK"
_PR_SET_PDEATHSIG = 1


def requested() -> bool:
    """True when the agent started this process as a one_shot fork server."""
    return FD_VARIABLE in os.environ


def serve(serve_one: Callable[[], None], resolve: Callable[[object], object]) -> None:
    """Be the fork server; in each fork, run ``serve_one`` and exit. Never returns in the
    zygote. ``resolve`` turns an awaitable ``@load`` result into its value."""
    sock = socket.socket(fileno=int(os.environ.pop(FD_VARIABLE)))
    load = os.environ.pop(LOAD_VARIABLE, "per_task")
    sock.set_inheritable(False)
    if not registry.handlers():
        from .runner import StartupError

        raise StartupError("no task handler registered: decorate a function with @task "
                           "before calling run()")
    unsafe = _unsafe_reason()
    if load == "inherit" and unsafe is None:
        _inherit_load(resolve)
        unsafe = _unsafe_reason()
    if unsafe is None and any(h.is_async for h in registry.handlers().values()):
        import asyncio  # noqa: F401 - imported once here, not in every fork (~25 ms)
    prctl = _prctl()
    channel = _channel_module.protocol_channel()  # the zygote's own: start-up and errors
    # the answer first, so the agent finds it waiting once it reads our ready message
    sock.send(json.dumps({"fork": unsafe is None, "reason": unsafe}).encode())
    channel.send({"status": "ready", "protocol": _channel_module.PROTOCOL_VERSION,
                  "task_types": sorted(registry.handlers()), "slots": 1, "max_in_flight": 1,
                  "pid": os.getpid(), "zygote": True})
    channel.ready_sent = True
    if unsafe is not None:  # the agent stops us and executes each task instead
        _wait_for_end(sock)
        os._exit(0)
    mark_at = _mark_address()
    import gc

    gc.freeze()  # a collection in a fork would write to every inherited object's pages
    request = _serve_forks(sock)  # returns in a fork only
    code = 0
    try:
        _become_task(request, prctl, mark_at)
        serve_one()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a fork must never return into the zygote's loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        from .tracing import flush as flush_spans  # no atexit after os._exit

        with contextlib.suppress(Exception):
            flush_spans()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _unsafe_reason() -> str | None:
    """Why forking this process is unsafe, or None."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "recv_fds"):
        return f"the fork server needs Linux and Python >= 3.9 (this is {sys.platform})"
    count = threading.active_count()
    if count > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"the task module runs {count - 1} other thread(s) ({names}); forking is unsafe"
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if tasks > 1:
        return f"the process runs {tasks} threads (started outside Python); forking is unsafe"
    return None


def _inherit_load(resolve: Callable[[object], object]) -> None:
    """Run ``@load`` here once; every fork gets its result (copy-on-write)."""
    loader = registry.loader()
    if loader is None:
        return
    from .runner import StartupError, _exception_line, _traceback

    try:
        value = loader()
        if hasattr(value, "__await__"):
            value = resolve(value)
    except Exception as exc:
        _traceback().print_exc(file=sys.stderr)
        channel = _channel_module.protocol_channel()
        channel.send({"status": "error", "error": _exception_line(exc)})
        raise SystemExit(1) from StartupError(str(exc))
    registry.load(lambda: value)


def _serve_forks(sock: socket.socket) -> dict:
    """The zygote's loop: fork on request, report exits. Returns (in the fork) its request."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    while True:
        ready, _, _ = select.select([sock, wake_read], [], [])
        if wake_read in ready:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            _reap(sock)
        if sock not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        except OSError:
            data, fds = b"", []
        if not data:  # the agent closed its end (stopped us, or died)
            os._exit(0)
        try:
            request = json.loads(data)
            if len(fds) != 3:
                raise ValueError(f"3 descriptors expected, got {len(fds)}")
            pid = os.fork()
        except (OSError, ValueError) as exc:
            for fd in fds:
                os.close(fd)
            _send(sock, {"id": _id_of(data), "error": f"{type(exc).__name__}: {exc}"})
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write):
                os.close(fd)
            sock.close()
            request["fds"] = fds
            return request
        for fd in fds:
            os.close(fd)
        _send(sock, {"id": request.get("id"), "pid": pid})


def _id_of(data: bytes) -> object:
    try:
        return json.loads(data).get("id")
    except (ValueError, AttributeError):
        return None


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:  # the agent is gone: our forks die with us
        os._exit(0)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _wait_for_end(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(65536):
                return
        except OSError:
            return


def _prctl() -> Callable[..., int] | None:
    """``prctl`` from libc, loaded in the zygote so forks need not load ctypes."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None


def _become_task(request: dict, prctl: Callable[..., int] | None,
                 mark_at: tuple[int, int] | None) -> None:
    """In the fork: a session of its own, death with the zygote, the task's descriptors,
    mark and rlimits; then a fresh protocol channel on its own pipes."""
    zygote = os.getppid()
    os.setsid()
    if prctl is not None:
        import ctypes

        prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(int(signal.SIGKILL)),
              ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        if os.getppid() != zygote:  # the zygote died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    request_fd, answer_fd, output_fd = request["fds"]
    os.dup2(output_fd, 1)  # task_sdk sends fd 1 to fd 2 anyway: one pipe carries both
    os.dup2(output_fd, 2)
    os.close(output_fd)
    old = _channel_module._channel
    if old is not None:  # the zygote's channel: not this task's
        for fd in (old._read_fd, old._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
    # this task's channel, as protocol_channel() would make it (fd 0 is /dev/null and fd 1
    # goes to fd 2 already); its first message, ready, tells the agent it speaks here
    for fd in (request_fd, answer_fd):  # nothing the task executes inherits them
        os.set_inheritable(fd, False)
    _channel_module._channel = _channel_module.ProtocolChannel(request_fd, answer_fd)
    mark = request.get("mark")
    if isinstance(mark, str) and mark:
        os.environ[CHILD_MARK_VARIABLE] = mark  # for what the task starts
        new = mark.encode()
        if mark_at is not None and len(new) == mark_at[1]:
            import ctypes

            ctypes.memmove(mark_at[0], new, len(new))
    if request.get("as") is not None or request.get("cpu") is not None:
        from task_sdk.rlimits import apply_rlimits

        apply_rlimits(request.get("as"), request.get("cpu"))


def _mark_address() -> tuple[int, int] | None:
    """Where this process's ``RUNDOWN_CHILD_MARK`` value sits in its environment block (the
    one ``/proc/<pid>/environ`` shows, which the agent's reaper reads), and its length: a
    fork overwrites it in place with its own mark of the same length (the agent pads both).
    None when it cannot be found."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        env_start = int(fields[47])  # field 50 of proc(5), counted after "pid (comm)"
        with open("/proc/self/environ", "rb") as environ:
            block = environ.read()
    except (OSError, ValueError, IndexError):
        return None
    prefix = CHILD_MARK_VARIABLE.encode() + b"="
    at = 0 if block.startswith(prefix) else block.find(b"\0" + prefix) + 1
    if at <= 0 and not block.startswith(prefix):
        return None
    start = at + len(prefix)
    end = block.find(b"\0", start)
    return env_start + start, (end if end >= 0 else len(block)) - start
