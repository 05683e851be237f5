"""One supervised child process: spawn, ready handshake, many tasks in flight, exit handling.

The child's pipes are read by an asyncio subprocess protocol, so every stdout chunk is split
and dispatched the moment it arrives (no reader tasks on the hot path), and the exit of the
process is seen even while something it spawned still holds a pipe open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psutil

from agent.supervisor.batches import BatchCrash, encode_batch
from agent.supervisor.channel import PrivateChannel
from agent.supervisor.health import Capacity, CrashSuspects
from agent.supervisor.launch import ChildSpec, rlimit_setter
from agent.supervisor.outcome import Outcome, deadline_exceeded
from agent.supervisor.output import STDERR_LINE_LIMIT, ChildOutput, ChildStartupError
from agent.supervisor.protocol import (
    LineSplitter,
    Ready,
    encode_cancel,
    encode_request,
)
from agent.supervisor.reaper import pdeathsig_preexec, process_marks, sweeper
from agent.supervisor.slots import SlotLedger
from agent.supervisor.task_request import TaskRequest

log = logging.getLogger("agent.supervisor.child")
_EXIT_DRAIN_SECONDS = 2.0  # after exit, how long the last output may take to arrive
DEADLINE_SWEEP = 0.1  # seconds between checks for handlers past their deadline


@dataclass(frozen=True, slots=True)
class ChildExit:
    """How a child ended. ``expected``: the agent stopped it (``reason`` says why)."""

    returncode: int
    description: str
    expected: bool
    reason: str


def describe_exit(returncode: int) -> str:
    """``exited with code 3``, ``was killed by SIGKILL, likely out of memory``, ..."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGKILL:
        return "was killed by SIGKILL, likely out of memory"
    if number == signal.SIGXCPU:
        return "was killed by SIGXCPU: its CPU time limit was reached"
    return f"was killed by {name}"


class Child(ChildOutput):
    """A child process running task code, and the tasks it holds.

    States: ``starting`` -> ``ready`` -> (``draining``) -> ``stopping`` -> ``exited``.
    ``retired`` is set as soon as the child must not get new tasks (draining, stopping or
    exited), which is the pool's cue to replace it.

    The child runs ``slots`` handlers at once (announced in its ready message: its handler
    threads, or its async limit when every handler is async). A task sent while a slot is
    free starts at once; up to ``spec.prefetch`` more wait in the child and start in the
    order sent as its handlers finish, which is when their timeout clocks start here too.
    ``capacity`` counts the handlers running across the agent (``worker.concurrency``).
    """

    def __init__(
        self,
        spec: ChildSpec,
        *,
        one_shot: bool = False,
        on_exit: Callable[[Child, ChildExit], None] | None = None,
        on_free: Callable[[], None] | None = None,
        capacity: Capacity | None = None,
        suspects: CrashSuspects | None = None,
    ) -> None:
        self.spec = spec
        self.one_shot = one_shot
        self.state = "starting"
        self.pid: int | None = None
        self.ready: Ready | None = None
        self.capacity = capacity or Capacity()
        self.ledger = SlotLedger(self.capacity, 1, 0 if one_shot else spec.prefetch)
        self.suspects = suspects or CrashSuspects()
        self.tasks_started = 0
        self.tasks_done = 0
        self.exit: ChildExit | None = None
        self.stderr_tail: deque[str] = deque(maxlen=spec.stderr_lines)
        self.mark = ""  # RUNDOWN_CHILD_MARK: found in its descendants' environment
        self.retired = asyncio.Event()
        self._on_exit = on_exit
        self._on_free = on_free  # called whenever a task ends here (room for another)
        self._exited = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = self.ledger.outcomes  # task id -> its outcome callback (hot path alias)
        self._sweeper: asyncio.TimerHandle | None = None
        self._cancelled: set[str] = set()
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._private: PrivateChannel | None = None  # task_sdk's request and answer pipes
        self.channel = "pending"  # which stream carries the protocol (ChildOutput)
        self._requests: asyncio.WriteTransport | None = None  # stdin or the private pipe
        self._outbox: list[bytes] = []
        self._reading = False  # inside _stdout_data: one "free" notice for all its answers
        self._stdout = LineSplitter(spec.line_limit)
        self._answers = LineSplitter(spec.line_limit)
        self._stderr = LineSplitter(STDERR_LINE_LIMIT)
        self._stdout_eof = asyncio.Event()
        self._stderr_eof = asyncio.Event()
        self._ready_waiter: asyncio.Future[Ready] | None = None
        self._stop_reason: str | None = None
        self._drain_reason = ""
        self._failure_note: str | None = None
        self._started_at = time.monotonic()
        self._ps: psutil.Process | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the process and wait for its ready message (``spec.startup_timeout``).

        Raises ``ChildStartupError``; the process is stopped before it is raised. Cancelling
        ``start()`` kills the process (SIGTERM during a long ``@load`` is honoured at once).
        """
        loop = asyncio.get_running_loop()
        self._ready_waiter = loop.create_future()
        spec = self.spec
        marks = process_marks().for_child()  # its descendants inherit them (reaper.py)
        self.mark = marks.key
        try:
            self._private = private = PrivateChannel()
            await private.connect(self._channel_data, self._channel_closed)
            try:
                await self._spawn({**spec.process_env(), **marks.env, **private.env()},
                                  private.pass_fds)
            finally:
                private.spawned()
        except (OSError, subprocess.SubprocessError) as exc:
            if self._private is not None:
                self._private.close()
            self._never_started()
            raise ChildStartupError(
                f"cannot start {spec.argv[0]!r} in {str(spec.cwd)!r}: {exc}"
            ) from None
        if self._stop_reason is not None:  # stop() was called while we were spawning
            await self.stop()
            raise ChildStartupError(f"child process {self.pid} was stopped while starting")
        try:
            self.ready = await asyncio.wait_for(self._ready_waiter, spec.startup_timeout)
        except TimeoutError:
            await self.stop(reason="startup timeout")
            raise ChildStartupError(
                f"child process {self.pid} did not report ready within "
                f"{spec.startup_timeout:g}s (a slow @load? raise the startup timeout)"
                f"{self.stderr_summary()}"
            ) from None
        except ChildStartupError:
            await self.stop(reason="startup failed")
            raise
        except asyncio.CancelledError:
            self.kill("start-up was cancelled (the agent is stopping)")
            with contextlib.suppress(TimeoutError):
                await asyncio.shield(asyncio.wait_for(self._exited.wait(), 2.0))
            raise
        ledger = self.ledger
        if self.ready.protocol is None or (self.ready.max_in_flight is None and self.ready.slots is None):
            ledger.slots = 1  # a runqy-style child reads its requests one at a time
            ledger.prefetch = 0  # and nothing says it would not start the next one early
        elif self.ready.slots is not None:
            ledger.slots = self.ready.slots
        else:  # task_sdk before slots: it ran this many at once
            ledger.slots = self.ready.max_in_flight or 1
        if self.one_shot:
            ledger.slots = 1
        if self.state == "starting":
            self.state = "ready"
        log.debug("queue %s: child process %s ready (%d slots)", spec.queue, self.pid, ledger.slots)

    async def _spawn(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
        """Start the process (``_connected`` is called with its transport). Overridden by
        the one_shot fork server's children (zygote.py), which are forked, not executed."""
        spec = self.spec
        await asyncio.get_running_loop().subprocess_exec(
            lambda: _Pipes(self),
            *spec.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.cwd,
            env=env,
            pass_fds=pass_fds,
            start_new_session=True,  # own process group: stopping it stops its children
            # killed by the kernel if the agent dies; the reaper takes the descendants
            preexec_fn=pdeathsig_preexec(rlimit_setter(spec) if self.one_shot else None),
        )

    def _use_channel(self, channel: str) -> None:
        """The child speaks the protocol on ``channel`` ("private" or "stdout") from now on.
        The stream it does not use is let go: a task_sdk child's stdin (it reads /dev/null
        by now; nothing it started before task_sdk can read requests there), a runqy-style
        child's private pipes."""
        self.channel = channel
        if channel == "private" and self._private is not None:
            self._requests = self._private.writer
            if self._stdin is not None:
                self._stdin.close()
        else:
            self._requests = self._stdin
            if self._private is not None:
                self._private.close()

    def _never_started(self) -> None:
        self.state = "exited"
        self.exit = ChildExit(-1, "could not be started", False, "")
        self.retired.set()
        self._exited.set()

    # -- tasks ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Tasks held: running and waiting in the child."""
        return len(self._pending)

    @property
    def slots(self) -> int:
        """Handlers the child runs at once (1 until its ready message says)."""
        return self.ledger.slots

    @property
    def busy(self) -> int:
        """Slots whose handler runs now."""
        return self.ledger.busy

    @property
    def waiting(self) -> int:
        """Tasks sent ahead, waiting in the child for a slot (prefetched)."""
        return len(self.ledger.waiting)

    @property
    def free_slots(self) -> int:
        """Slots where a task sent now starts at once (0 unless ready)."""
        return self.ledger.free_slots if self.state == "ready" else 0

    @property
    def prefetch_room(self) -> int:
        """Tasks that may still be sent to wait here for a slot (only once all are busy)."""
        return self.ledger.prefetch_room if self.state == "ready" else 0

    def running(self, task_id: str) -> bool:
        return task_id in self._pending

    def handler_started(self, task_id: str) -> bool:
        """True when the task's handler runs now (not waiting for a slot)."""
        return self.ledger.handler_running(task_id)

    async def run(self, request: TaskRequest) -> Outcome:
        """Send ``request`` and wait for its outcome.

        Never raises for anything the child does: a crash, a hang past the deadline or an
        unusable answer all become outcomes. Past ``deadline + spec.deadline_grace`` the task
        gets a ``retry`` timeout outcome and the child is killed.
        """
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if not self.submit(request, lambda outcome: future.done() or future.set_result(outcome)):
            return Outcome("requeue", error=f"child process {self.pid} was not running")
        try:
            return await future
        except asyncio.CancelledError:  # our caller gave up: the child should too
            self.withdraw(request.task_id)
            raise

    def submit(self, request: TaskRequest, on_outcome: Callable[[Outcome], None]) -> bool:
        """Send ``request``: it starts at once in a free slot (counted in ``capacity``), or
        waits here for one. ``on_outcome`` is called once with its outcome, from the event
        loop (the pipe reader, the deadline sweep or the exit handler). False, and nothing
        sent, when the child is not running. The caller checks ``free_slots`` /
        ``prefetch_room`` first. The hot path: no task or future per request."""
        task_id = request.task_id
        if self.exit is not None or self.state in ("stopping", "starting"):
            return False
        if self.ledger.holds(task_id):
            raise ValueError(f"task {task_id} is already running in child process {self.pid}")
        self._idle.clear()
        self.tasks_started += 1
        if self.ledger.hold(request, on_outcome, time.time()) and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(DEADLINE_SWEEP, self._sweep_deadlines)
        assert self._requests is not None
        if self.one_shot:
            self._requests.write(encode_request(request))
            self._requests.close()  # flushes, then closes: the child sees end of input
        else:
            self._send(encode_request(request))
        limit = self.spec.max_tasks_per_child
        if limit and not self.one_shot and self.tasks_started >= limit:
            self.drain(f"recycled after {self.tasks_started} tasks (max_tasks_per_child)")
        return True

    def submit_batch(self, batch_id: str, requests: list[TaskRequest],
                     callbacks: list[Callable[[Outcome], None]]) -> bool:
        """Send a batch of tasks to one free slot (supervisor/batches.py); False, nothing
        sent, when the child has no free slot or is not running."""
        if self.exit is not None or self.state != "ready" or self.free_slots < 1:
            return False
        self._idle.clear()
        self.tasks_started += len(requests)
        self.ledger.hold_batch(batch_id, requests, callbacks, time.time())
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(DEADLINE_SWEEP, self._sweep_deadlines)
        self._send(encode_batch(batch_id, requests))
        limit = self.spec.max_tasks_per_child
        if limit and self.tasks_started >= limit:
            self.drain(f"recycled after {self.tasks_started} tasks (max_tasks_per_child)")
        return True

    def withdraw(self, task_id: str) -> bool:
        """Stop waiting for a task (its caller gave up): forget its outcome, and ask the child
        to cancel it. Its ``on_outcome`` is never called. Its slot stays busy until the child
        answers (a sync handler cannot be interrupted). False if it was not held here."""
        if self._pending.pop(task_id, None) is None:
            return False
        self._send_cancel(task_id)
        if not self._pending:
            self._idle.set()
        return True

    async def cancel(self, task_id: str) -> bool:
        """Ask the child to cancel a running task; False if it cannot (not here, or a
        runqy-style child, which has no cancel message)."""
        if task_id not in self._pending:
            return False
        if self.one_shot:
            self._cancelled.add(task_id)
            self._in_background(self.stop(reason="its task was cancelled"))
            return True
        return self._send_cancel(task_id)

    def _send_cancel(self, task_id: str) -> bool:
        if self.ready is None or not self.ready.protocol or self._requests is None:
            return False
        if self._requests.is_closing():
            return False
        self._send(encode_cancel(task_id))
        return True

    def _send(self, line: bytes) -> None:
        """Queue a line for the child; all lines of one event-loop turn go in one write."""
        self._outbox.append(line)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        if not self._outbox:
            return
        data, self._outbox = b"".join(self._outbox), []
        if self._requests is not None and not self._requests.is_closing():
            self._requests.write(data)

    def _sweep_deadlines(self) -> None:
        """Every DEADLINE_SWEEP seconds while handlers run: a handler past its deadline plus
        ``deadline_grace`` fails its task and the child is killed."""
        self._sweeper = None
        if self.exit is not None or not self.ledger.running:
            return
        late = self.ledger.first_late(time.time() - self.spec.deadline_grace)
        if late is not None and self._stop_reason is None:
            self._deadline_passed(late)
        if self.ledger.running and self.exit is None:
            self._sweeper = asyncio.get_running_loop().call_later(DEADLINE_SWEEP, self._sweep_deadlines)

    def _deadline_passed(self, request: TaskRequest) -> None:
        limit = time.time() - self.spec.deadline_grace
        late = [request] + [entry[1] for mate in self.ledger.batch_mates(request.task_id)
                            if (entry := self.ledger.running.get(mate)) and entry[0] <= limit]
        self.kill(f"task {request.task_id} exceeded its deadline")
        for task in late:  # a batch's tasks whose deadline passed too fail with it
            self._charge_deadline(task)

    def _charge_deadline(self, request: TaskRequest) -> None:
        on_outcome = self._pending.pop(request.task_id, None)
        self._cancelled.discard(request.task_id)
        seconds = self.ledger.handler_seconds(request.task_id)
        log.warning(
            "queue %s: task %s exceeded its deadline; killing child process %s",
            self.spec.queue,
            request.task_id,
            self.pid,
        )
        if on_outcome is not None:
            if request.timeout and seconds >= request.timeout - 0.001:
                why = "its timeout"
            elif request.deadline is not None:
                why = "the task's deadline"
            else:
                why = "asynq's default timeout of 30 minutes"
            on_outcome(Outcome("retry", error=deadline_exceeded(
                seconds, f"{why}; child process {self.pid} killed and replaced")))

    def _task_finished(self, task_id: str) -> None:
        """The child answered ``task_id``: its slot goes to the task waiting longest, or
        is free."""
        self.tasks_done += 1
        self._cancelled.discard(task_id)
        self.ledger.answered(task_id, time.time())
        if not self._reading:
            self._freed()

    def _freed(self) -> None:
        """Room for more tasks: tell the pool (once per chunk of answers read)."""
        if not self._pending:
            self._idle.set()
        if self._on_free is not None:
            self._on_free()

    # -- draining and stopping ------------------------------------------------------------

    def drain(self, reason: str) -> None:
        """Take no new tasks; the pool stops the child once its tasks are done."""
        if self.state == "ready":
            self.state = "draining"
            self._drain_reason = reason
            self.retired.set()
            log.info("queue %s: child process %s %s", self.spec.queue, self.pid, reason)

    async def retire(self) -> None:
        """Wait for the tasks in flight, then stop (after ``drain``)."""
        await self._idle.wait()
        await self.stop(reason=self._drain_reason or "retired")

    async def stop(self, grace: float | None = None, reason: str = "stopped by the agent") -> None:
        """SIGTERM to the child's process group (and end of its stdin), SIGKILL after ``grace``
        seconds (default ``spec.stop_grace``). Tasks still in flight when it exits get a
        ``requeue`` outcome (cancelled ones ``retry``)."""
        if self._stop_reason is None and self.exit is None:
            self._stop_reason = reason
            if self.state != "exited":
                self.state = "stopping"
            self.retired.set()
            if self._transport is None:
                return  # still spawning: start() stops it as soon as it exists
            self._signal(signal.SIGTERM)
            self._flush_outbox()
            for requests in (self._requests, self._stdin):
                if requests is not None:
                    requests.close()
        if self._transport is None:
            return
        grace = self.spec.stop_grace if grace is None else grace
        try:
            await asyncio.wait_for(self._exited.wait(), grace)
        except TimeoutError:
            log.warning(
                "queue %s: child process %s did not exit %gs after SIGTERM; sending SIGKILL",
                self.spec.queue,
                self.pid,
                grace,
            )
            self._signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(self._exited.wait(), 5.0)
            except TimeoutError:
                log.error("queue %s: child process %s survived SIGKILL", self.spec.queue, self.pid)

    def kill(self, reason: str) -> None:
        """SIGKILL the child's process group now (a hung or runaway handler: SIGTERM would
        not stop it). Tasks it still holds get ``requeue`` outcomes when it exits."""
        if self.exit is not None:
            return
        if self._stop_reason is None:
            self._stop_reason = reason
        self.state = "stopping"
        self.retired.set()
        self._signal(signal.SIGKILL)

    def finish_and_exit(self, reason: str) -> None:
        """Graceful stop for a drain: the child finishes the handlers running now, starts
        none of the tasks waiting in it, and exits (task_sdk does that on SIGTERM, which goes
        to the child alone, not to what its handlers started). A runqy-style child, whose
        SIGTERM behaviour we do not know, is stopped once its task is done."""
        if self.exit is not None or self._stop_reason is not None:
            return
        if self.ready is None or not self.ready.protocol:
            self.drain(reason)
            self._in_background(self.retire())
            return
        self._stop_reason = reason
        self.state = "stopping"
        self.retired.set()
        if self.pid is not None and self._transport is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill_for_memory(self, rss: int, limit: int) -> None:
        """RSS is over ``max_memory_per_child``: kill the child now. The handler running
        in it is to blame; with several running, see ``CrashSuspects``."""
        running = self.ledger.running_held()
        error = (f"memory limit exceeded ({rss // 1_000_000} MB > {limit // 1_000_000} MB, "
                 f"max_memory_per_child); child process {self.pid} killed")
        log.warning("queue %s: child process %s: %s", self.spec.queue, self.pid, error)
        for task_id in self.suspects.guilty(running):
            on_outcome = self._pending.pop(task_id)
            on_outcome(Outcome("retry", error=error))
        self.kill(f"memory limit exceeded ({rss // 1_000_000} MB)")

    async def wait_exited(self) -> ChildExit | None:
        await self._exited.wait()
        return self.exit

    def _signal(self, sig: int) -> None:
        """Signal the child's process group (the child and whatever it started)."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            # The group is gone, or the child left it (setsid). Signal the child itself, but
            # only while it has not been reaped: its pid could belong to someone else then.
            if self._transport is not None and self._transport.get_returncode() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
        except PermissionError as exc:
            log.warning(
                "queue %s: cannot signal child process %s: %s", self.spec.queue, self.pid, exc
            )

    # -- what the pipes deliver -----------------------------------------------------------

    def _connected(self, transport: asyncio.SubprocessTransport) -> None:
        self._transport = transport
        self.pid = transport.get_pid()
        stdin = transport.get_pipe_transport(0)
        assert stdin is not None
        # Requests are bounded by slots + prefetch, so writes need no back-pressure (no drain).
        self._stdin = stdin

    def _process_exited(self) -> None:
        assert self._transport is not None
        returncode = self._transport.get_returncode()
        self._in_background(self._finalize(returncode if returncode is not None else -1))

    async def _finalize(self, returncode: int) -> None:
        self._signal(signal.SIGKILL)  # whatever the child left behind in its process group
        if self.mark:
            sweeper.child_exited(self.mark)  # and what left the group (setsid)
        ends = [self._stdout_eof.wait(), self._stderr_eof.wait()]
        if self._private is not None:
            ends.append(self._private.closed.wait())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*ends), _EXIT_DRAIN_SECONDS)
        if self._transport is not None:
            self._transport.close()
        if self._private is not None:
            self._private.close()
        expected = self._stop_reason is not None
        description = self._failure_note or describe_exit(returncode)
        self.exit = ChildExit(returncode, description, expected, self._stop_reason or "")
        self.state = "exited"
        self.retired.set()
        if self._ready_waiter is not None and not self._ready_waiter.done():
            self._ready_waiter.set_exception(
                ChildStartupError(
                    f"child process {self.pid} {description} during start-up, before reporting "
                    f"ready{self.stderr_summary()}"
                )
            )
        running = self.ledger.running_held()
        batched = set(self.ledger.batch_of)
        pending = self.ledger.release_all()
        self._pending = self.ledger.outcomes
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        # A crash is the fault of the handler that ran; with several running, of none of
        # them for sure (CrashSuspects). Tasks that had not started, and every task of a child
        # the agent stopped, go back to their queue with no retry counted.
        guilty = set() if expected else set(self.suspects.guilty(running))
        for task_id, on_outcome in pending.items():
            if task_id in self._cancelled:
                outcome = Outcome("retry", error="cancelled: the task was cancelled while running")
            elif task_id in batched and not expected:  # batches.py bisects the batch
                outcome = BatchCrash("retry", error=f"child process {self.pid} {description} "
                                     f"while running this task{self.stderr_summary()}")
            elif task_id in guilty:
                outcome = Outcome(
                    "retry",
                    error=f"child process {self.pid} {description} while running this task"
                    f"{self.stderr_summary()}",
                )
            else:
                why = self._stop_reason if expected else description
                outcome = Outcome(
                    "requeue",
                    error=f"child process {self.pid} ended ({why}) before the task finished",
                )
            on_outcome(outcome)
        self._idle.set()
        self._exited.set()
        if not expected and self.ready is not None and not self.one_shot:
            log.warning(
                "queue %s: child process %s %s (%d tasks in flight)%s",
                self.spec.queue,
                self.pid,
                description,
                len(pending),
                self.stderr_summary(),
            )
        else:
            log.debug("queue %s: child process %s %s", self.spec.queue, self.pid, description)
        if self._on_exit is not None:
            self._on_exit(self, self.exit)

    # -- inspection -----------------------------------------------------------------------

    def rss(self) -> int | None:
        """Resident memory of the child process in bytes (None once it is gone)."""
        if self.pid is None or self.exit is not None:
            return None
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return None

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state,
            "uptime": round(time.monotonic() - self._started_at, 3),
            "tasks_done": self.tasks_done,
            "in_flight": self.in_flight,
            "slots": self.slots,
            "running": self.busy,
            "waiting": self.waiting,
            "rss": self.rss(),
            **({"gpu": self.spec.gpu} if self.spec.gpu is not None else {}),
        }

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Pipes(asyncio.SubprocessProtocol):
    """Routes the subprocess transport's callbacks to its ``Child``."""

    def __init__(self, child: Child) -> None:
        self._child = child

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes
        self._child._connected(transport)  # type: ignore[arg-type]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._child._stdout_data(data)
        elif fd == 2:
            self._child._stderr_data(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._child._pipe_closed(fd)

    def process_exited(self) -> None:
        self._child._process_exited()
