"""The one_shot fork server: a warm process per deployment that forks one process per task.

``Zygote`` starts the deployment's command as a ``Child`` with ``RUNDOWN_ZYGOTE_FD`` naming
its end of a Unix ``SOCK_SEQPACKET`` socket (task_sdk/zygote.py is the other side): it
imports the task module (and runs ``@load`` with ``one_shot_load: inherit``), reports ready
as any child does, then says whether forking is safe. ``ForkedChild`` is a one_shot ``Child``
whose process the zygote forks instead of the agent executing it: the agent makes its pipes
as for an executed child and sends the child's ends with the request (``SCM_RIGHTS``); the
zygote answers the pid, and later its exit status (only the parent can reap it). Everything
else (ready handshake, request, answer, deadline, stop, crash blame) is ``Child``'s.

Rules kept from executed children: each task process is its own session and process group,
has the one_shot rlimits and its own child mark (reaper.py: the zygote's mark has the same
length and the fork overwrites it in place), and dies with the agent (the kernel's
parent-death signal: task -> zygote -> agent, and the agent's token, which every fork
carries). If the zygote dies, its forks are killed and their tasks go back to their queue
uncharged (not their fault); the next task starts a new zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from agent.supervisor.child import Child, ChildExit
from agent.supervisor.launch import ChildSpec
from agent.supervisor.reaper import CHILD_MARK_VAR

log = logging.getLogger("agent.supervisor")

FD_VARIABLE = "RUNDOWN_ZYGOTE_FD"
LOAD_VARIABLE = "RUNDOWN_ZYGOTE_LOAD"
LOAD_MODES = ("per_task", "inherit")
_SERIAL_WIDTH = 12  # child keys of the zygote and its forks have one length (in-place rewrite)


def padded(key: str) -> str:
    """A child key (``<token>.<serial>``) with a fixed-width serial: the zygote's and its
    forks' keys have one length, so a fork can overwrite the zygote's in place."""
    token, _, serial = key.partition(".")
    return f"{token}.{serial.zfill(_SERIAL_WIDTH)}"


class ZygoteUnavailable(Exception):
    """The zygote cannot fork for us (it is gone, or forking is unsafe in it)."""


class _ZygoteProcess(Child):
    """The zygote itself: a child that also holds the fork-request socket."""

    def __init__(self, spec: ChildSpec, fd: int, load: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self._fd = fd
        self._load = load

    async def _spawn(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
        self.mark = padded(env[CHILD_MARK_VAR])
        env = {**env, CHILD_MARK_VAR: self.mark, FD_VARIABLE: str(self._fd),
               LOAD_VARIABLE: self._load}
        await super()._spawn(env, (*pass_fds, self._fd))


class Zygote:
    """One deployment's fork server (see the module docstring)."""

    def __init__(self, spec: ChildSpec, load: str = "per_task") -> None:
        if load not in LOAD_MODES:
            raise ValueError(f"one_shot_load must be per_task or inherit, got {load!r}")
        self.spec = spec
        self.load = load
        self.unsafe: str | None = None  # why this deployment cannot fork (exec instead)
        self.process: _ZygoteProcess | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._forks: dict[int, asyncio.Future[int]] = {}  # request id -> its pid
        self._exits: dict[int, Callable[[int, bool], None]] = {}  # pid -> called with its exit code
        self._early: dict[int, int] = {}  # exits reported before their pid was registered
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exit is None and self._sock is not None

    async def start(self) -> None:
        """Start the zygote and learn whether it can fork (``unsafe`` says why not).
        ``ChildStartupError`` as for any child."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = _ZygoteProcess(self.spec, theirs.fileno(), self.load, on_exit=self._exited)
        try:
            await process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        try:  # sent before its ready message: already here, unless it is no fork server
            first = await asyncio.wait_for(loop.sock_recv(ours, 65536), 1.0)
            hello = json.loads(first) if first else {}
        except (TimeoutError, OSError, ValueError):  # ready, but no fork server (runqy style)
            hello = {"reason": "the startup command reported ready without running task_sdk's "
                               "fork server (run_once())"}
        if not isinstance(hello, dict) or not hello.get("fork"):
            self.unsafe = str(hello.get("reason") or "the child does not run a fork server")
            ours.close()
            await process.stop(reason="cannot fork")
            return
        self._sock, self.process, self._stopping = ours, process, False
        loop.add_reader(ours.fileno(), self._readable)
        log.info("queue %s: one_shot fork server ready (pid %s, @load %s)", self.spec.queue,
                 process.pid, "inherited" if self.load == "inherit" else "per task")

    async def fork(self, fds: list[int], mark: str,
                   on_exit: Callable[[int, bool], None]) -> int:
        """Fork a task process with ``fds`` (request, answer, output); returns its pid.
        ``on_exit(code, lost)`` gets its exit code, or ``lost`` when the zygote died first."""
        if not self.alive or self._sock is None:
            raise ZygoteUnavailable("the one_shot fork server is not running")
        request_id = next(self._ids)
        message = {"id": request_id, "mark": mark, "as": self.spec.rlimit_as_bytes,
                   "cpu": self.spec.rlimit_cpu_seconds}
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks[request_id] = future
        try:
            socket.send_fds(self._sock, [json.dumps(message).encode()], fds)
        except OSError as exc:
            self._forks.pop(request_id, None)
            raise ZygoteUnavailable(f"cannot reach the one_shot fork server: {exc}") from None
        try:
            pid = await future
        finally:
            self._forks.pop(request_id, None)
        code = self._early.pop(pid, None)
        if code is not None:
            asyncio.get_running_loop().call_soon(on_exit, code, False)
        else:
            self._exits[pid] = on_exit
        return pid

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if "exit" in message:
                pid, code = int(message["exit"]), int(message["code"])
                callback = self._exits.pop(pid, None)
                if callback is None:
                    self._early[pid] = code
                else:
                    callback(code, False)
                continue
            future = self._forks.get(message.get("id"))
            if future is None or future.done():
                continue
            if "pid" in message:
                future.set_result(int(message["pid"]))
            else:
                future.set_exception(ZygoteUnavailable(
                    f"the one_shot fork server could not fork: {message.get('error')}"))

    def _lost(self) -> None:
        """The socket ended: the zygote is gone. Its forks died with it (parent-death
        signal); they are killed again here and reported as killed."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        for future in self._forks.values():
            if not future.done():
                future.set_exception(ZygoteUnavailable("the one_shot fork server exited"))
        exits, self._exits = self._exits, {}
        if not self._stopping:
            process = self.process
            log.warning("queue %s: the one_shot fork server process %s ended unexpectedly; "
                        "%d running task(s) go back to their queue, the next task starts a "
                        "new one", self.spec.queue, process.pid if process else None, len(exits))
        for callback in exits.values():
            callback(-signal.SIGKILL, True)

    def _exited(self, child: Child, exit: ChildExit) -> None:
        if not exit.expected:
            log.warning("queue %s: the one_shot fork server process %s %s%s", self.spec.queue,
                        child.pid, exit.description, child.stderr_summary())
        if child is self.process:  # not an earlier zygote, whose exit may be seen late
            self._lost()

    async def stop(self, grace: float | None = None) -> None:
        process = self.process
        self._stopping = True
        self._lost()
        if process is not None:
            await process.stop(grace, reason="the fork server is no longer needed")


class _NullWriter:
    """The forked child's stdin stand-in (it reads /dev/null; requests go on its pipe)."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True


class _ForkedTransport:
    """What ``Child`` needs of a subprocess transport, for a process the zygote forked."""

    def __init__(self, child: ForkedChild) -> None:
        self._child = child
        self.pid: int | None = None
        self.returncode: int | None = None
        self.pipes: list[asyncio.BaseTransport] = []
        self._stdin = _NullWriter()

    def get_pid(self) -> int | None:
        return self.pid

    def get_returncode(self) -> int | None:
        return self.returncode

    def get_pipe_transport(self, fd: int) -> Any:
        return self._stdin if fd == 0 else None

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()

    def exited(self, code: int, lost: bool) -> None:
        """The zygote reaped the process (``code``), or died (``lost``): then the process
        is killed, and its task, not at fault, goes back to its queue."""
        if self.returncode is None:
            if lost:
                self._child.kill("its one_shot fork server exited")
            self.returncode = code
            self._child._process_exited()


class _OutputPipe(asyncio.Protocol):
    def __init__(self, child: ForkedChild, fd: int) -> None:
        self._child, self._fd = child, fd

    def data_received(self, data: bytes) -> None:
        if self._fd == 1:
            self._child._stdout_data(data)
        else:
            self._child._stderr_data(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._child._pipe_closed(self._fd)


class ForkedChild(Child):
    """A one_shot child forked by ``zygote`` (see the module docstring)."""

    def __init__(self, spec: ChildSpec, zygote: Zygote, **kwargs: Any) -> None:
        super().__init__(spec, one_shot=True, **kwargs)
        self.zygote = zygote

    async def _spawn(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
        loop = asyncio.get_running_loop()
        transport = _ForkedTransport(self)
        self.mark = mark = padded(env[CHILD_MARK_VAR])
        read_end, write_end = os.pipe()  # its stdout and stderr (task_sdk joins them)
        try:
            pipe, _ = await loop.connect_read_pipe(
                lambda: _OutputPipe(self, 2), os.fdopen(read_end, "rb", buffering=0))
            transport.pipes.append(pipe)
            transport.pid = await self.zygote.fork([*pass_fds, write_end], mark, transport.exited)
        except ZygoteUnavailable as exc:
            transport.close()
            raise OSError(str(exc)) from None
        finally:
            os.close(write_end)
        self._pipe_closed(1)  # no stdout of its own
        self._connected(transport)  # type: ignore[arg-type]
