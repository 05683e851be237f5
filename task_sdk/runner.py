"""``run()`` and ``run_once()``: the child's side of the JSON-lines protocol (docs/protocol.md)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import signal
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Awaitable

from . import batching, mixed, registry, tracing
from .channel import PROTOCOL_VERSION, ProtocolChannel, protocol_channel
from .context import TaskContext, _set_current
from .errors import RetryAfter, SkipRetry
from .progress import finish as _progress_finish

# typing, inspect, dataclasses, traceback and base64 are not imported at start: every child,
# and every one_shot task, pays for its imports (traceback and base64 load when needed)
TYPE_CHECKING = False

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from typing import Any

ANSWER_BATCH = 64  # answers written together at most (inline mode)
ANSWER_HOLD = 0.001  # seconds an answer may wait for others (inline mode)
_EOF = object()  # the agent closed our stdin
_STOP = object()  # SIGTERM: finish what is in flight, take nothing new
_WAKE = object()  # a task finished while stopping


class _Stop(BaseException):
    """SIGTERM while an inline child waits for a request."""


class StartupError(Exception):
    """Raised (and reported to the agent) when the child cannot start serving."""


class Settings(namedtuple("Settings", "async_limit sync_threads")):
    """Limits the agent passes through the environment."""

    __slots__ = ()

    @classmethod
    def from_env(cls) -> Settings:
        legacy = _positive_int_env("RUNDOWN_MAX_IN_FLIGHT", 1)
        return cls(
            async_limit=_positive_int_env("RUNDOWN_ASYNC_LIMIT", legacy),
            sync_threads=_positive_int_env("RUNDOWN_SYNC_THREADS", 1),
        )

    def slots(self) -> int:
        """Handlers this child runs at once: its threads when any handler is sync (a sync
        handler may take any slot), its async limit when every handler is async."""
        if any(not h.is_async for h in registry.handlers().values()):
            return self.sync_threads
        return self.async_limit


def _traceback():
    import traceback

    return traceback


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StartupError(f"environment variable {name} must be a whole number >= 1, got {raw!r}")
    return value


def run() -> None:
    """Serve tasks until the agent closes stdin or sends SIGTERM, then exit.

    Runs ``@load`` once, reports ready, then handles requests as they come: async handlers
    concurrently up to ``RUNDOWN_MAX_IN_FLIGHT``, sync handlers in a pool of
    ``RUNDOWN_SYNC_THREADS`` threads. On SIGTERM it stops taking tasks, lets the running ones
    finish and answer, and returns.
    """
    _serve(once=False)


def run_once() -> None:
    """Serve exactly one task (the agent's ``one_shot`` mode), then return.

    Runs ``@load``, reports ready, reads a single request, answers it and returns. Returns
    without output if the agent closes stdin before sending a request. Started as the
    agent's one_shot fork server, it forks a process per task instead (zygote.py).
    """
    if os.environ.get("RUNDOWN_ZYGOTE_FD"):
        from . import zygote

        try:
            zygote.serve(lambda: _serve(once=True), _run_coroutine)
        except StartupError as exc:
            _report_startup_error(protocol_channel(), str(exc))
            raise SystemExit(1) from None
    _serve(once=True)


def _serve(*, once: bool) -> None:
    channel = protocol_channel()
    server = _Server(channel, once=once)
    try:
        if not server.serve_inline():
            import asyncio  # only now: importing it costs a short-lived child ~25 ms

            asyncio.run(server.serve())
    except StartupError as exc:
        _report_startup_error(channel, str(exc))
        raise SystemExit(1) from None


def _report_startup_error(channel: ProtocolChannel, message: str) -> None:
    print(f"task_sdk: startup failed: {message}", file=sys.stderr, flush=True)
    if not channel.ready_sent:
        with contextlib.suppress(OSError):
            channel.send({"status": "error", "error": message})


def _exception_line(exc: BaseException) -> str:
    """``ExcType: message`` (the last line of a traceback), or just the type's name."""
    return _traceback().format_exception_only(type(exc), exc)[-1].strip()


def _handler_deadline(message: dict[str, Any], started_at: float) -> float | None:
    """When this task's handler must be done: ``timeout`` seconds after it starts, never
    later than the task's absolute ``deadline`` (a task that waited in this child for a
    free slot has not used any of its timeout)."""
    deadline = _as_float(message.get("deadline"))
    timeout = _as_float(message.get("timeout"))
    if timeout is not None:
        limit = started_at + timeout
        return limit if deadline is None else min(limit, deadline)
    return deadline


def _deadline_text(ctx: TaskContext, started_at: float) -> str:
    """asynq's ``context deadline exceeded`` first (what its tooling and users search for),
    then how long the handler had."""
    seconds = ctx.timeout if ctx.timeout else (ctx.deadline or started_at) - started_at
    return (f"context deadline exceeded: task exceeded its deadline of "
            f"{round(max(seconds, 0.0), 3):g}s (its async handler was cancelled)")


class _Server:
    def __init__(self, channel: ProtocolChannel, *, once: bool) -> None:
        self.channel = channel
        self.once = once
        self.ctx: Any = None
        self.settings: Settings | None = None
        self.inbox: asyncio.Queue[object] | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancel_requested: set[str] = set()
        self.in_threads: set[str] = set()  # tasks whose sync handler is running in a thread
        self.accepting = True
        self.executor: ThreadPoolExecutor | None = None
        self.slots = 1  # handlers run at once (Settings.slots)
        # requests sent ahead of a free slot (the agent's prefetch), started in arrival order
        self.waiting: dict[str, dict[str, Any]] = {}
        self._held: list[bytes] = []  # answers not yet written
        self._held_lock = threading.Lock()
        self._held_since = 0.0
        self._watchdog: _HeldAnswerWatchdog | None = None
        self._slow: set[Any] = set()  # inline mode: handlers whose last run was slow
        self._inline_async: mixed.InlineAsync | None = None  # inline mode: async handlers

    # -- start-up -------------------------------------------------------------------------

    def serve_inline(self) -> bool:
        """Serve on this thread without asyncio when the handlers allow it (see
        ``_inline_possible``); False when the asyncio server is needed instead."""
        self.settings = Settings.from_env()
        self._check_handlers()
        self.slots = self.settings.slots()
        loader = registry.loader()
        if not self._inline_possible() or (loader is not None and registry.is_coroutine_function(loader)):
            return False
        self._load(lambda value: _run_coroutine(value))
        self._announce()
        self._serve_inline()
        return True

    async def serve(self) -> None:
        import asyncio

        self.inbox = asyncio.Queue()
        await self._start()
        loop = asyncio.get_running_loop()
        # Not possible off the main thread or without signals; then SIGTERM simply ends us.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.inbox.put_nowait, _STOP)
        threading.Thread(
            target=self._read_requests, args=(loop,), name="task_sdk-stdin", daemon=True
        ).start()
        try:
            await self._dispatch()
        finally:
            self._flush_answers()
            if self.executor is not None:
                self.executor.shutdown(wait=False)

    def _answer_soon(self, line: bytes) -> None:
        """Queue an answer; all answers of one event-loop turn go out in one write."""
        self._held.append(line)
        if len(self._held) == 1:
            import asyncio

            asyncio.get_running_loop().call_soon(self._flush_answers)

    def _flush_answers(self) -> None:
        with self._held_lock:  # the watchdog thread may write held answers too
            if self._held:
                data = b"".join(self._held)
                self._held.clear()
                self.channel.send_line(data)

    def _hold(self, answer: bytes, started: float) -> None:
        """Inline mode: keep an answer to write with the next ones. The watchdog writes it
        if a handler after it runs long, so the agent learns at once that the next task
        started (its timeout clock) whatever that handler does."""
        with self._held_lock:
            first = not self._held
            if first:
                self._held_since = started
            self._held.append(answer)
        if first:
            if self._watchdog is None:
                self._watchdog = _HeldAnswerWatchdog(self)
            self._watchdog.wake()

    def _check_handlers(self) -> None:
        if not registry.handlers():
            raise StartupError(
                "no task handler registered: decorate a function with @task before calling run()"
            )

    def _load(self, resolve: Any) -> Any:
        """Run ``@load``; ``resolve`` turns an awaitable it returned into its value."""
        loader = registry.loader()
        if loader is None:
            return None
        try:
            value = loader()
            if isinstance(value, Awaitable):
                value = resolve(value)
        except Exception as exc:
            _traceback().print_exc(file=sys.stderr)
            raise StartupError(_exception_line(exc)) from exc
        self.ctx = value
        return value

    def _announce(self) -> None:
        assert self.settings is not None
        batched = batching.announce(registry.handlers())
        self.channel.send(
            {
                "status": "ready",
                "protocol": PROTOCOL_VERSION,
                "task_types": sorted(registry.handlers()),
                "slots": self.slots,
                "max_in_flight": self.slots,  # agents before slots: as many as it runs at once
                "sync_threads": self.settings.sync_threads,
                "async_limit": self.settings.async_limit,
                "pid": os.getpid(),
            } | ({"batch": batched} if batched else {}),
        )
        self.channel.ready_sent = True

    async def _start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.settings = Settings.from_env()
        self._check_handlers()
        loader = registry.loader()
        if loader is not None:
            try:
                value = loader()
                if isinstance(value, Awaitable):
                    value = await value
            except Exception as exc:
                _traceback().print_exc(file=sys.stderr)
                raise StartupError(_exception_line(exc)) from exc
            self.ctx = value
        # At most `slots` handlers run at once; requests beyond them (the agent's prefetch)
        # wait in `waiting` and start in arrival order as handlers finish, which is the order
        # the agent assumes when it starts their timeout clocks.
        self.slots = self.settings.slots()
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.sync_threads, thread_name_prefix="task_sdk-handler"
        )
        self._announce()

    def _read_requests(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: hand each request line to the event loop."""
        try:
            while True:
                line = self.channel.read_line()
                if line is None:
                    break
                loop.call_soon_threadsafe(self.inbox.put_nowait, line)
                if self.once:
                    break
        except (OSError, ValueError) as exc:
            print(f"task_sdk: reading requests failed: {exc}", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self.inbox.put_nowait, _EOF)

    # -- the request loop -----------------------------------------------------------------

    async def _dispatch(self) -> None:
        while self.accepting or self.tasks:
            item = await self.inbox.get()
            if item is _EOF or item is _STOP:
                self.accepting = False
                self.waiting.clear()  # never started: the agent requeues them after we exit
            elif isinstance(item, bytes):
                self._on_line(item)
            if self.once and self.tasks:
                self.accepting = False

    def _on_line(self, line: bytes) -> None:
        import asyncio

        try:
            message = json.loads(line)
        except ValueError:
            print(
                f"task_sdk: ignoring a request line that is not JSON: {line[:200]!r}",
                file=sys.stderr,
                flush=True,
            )
            return
        if not isinstance(message, dict):
            print(
                f"task_sdk: ignoring a request that is not a JSON object: {line[:200]!r}",
                file=sys.stderr,
                flush=True,
            )
            return
        if "cancel" in message:
            self._cancel(message["cancel"])
            return
        task_id = message.get("task_id") or batching.batch_key(message)
        if not isinstance(task_id, str) or not task_id:
            print(
                f"task_sdk: ignoring a request without a task_id: {line[:200]!r}",
                file=sys.stderr,
                flush=True,
            )
            return
        if not self.accepting:
            return  # stopping: the agent requeues whatever we did not answer
        if task_id in self.tasks or task_id in self.waiting:
            print(
                f"task_sdk: task {task_id} is already running; duplicate request ignored",
                file=sys.stderr,
                flush=True,
            )
            return
        if len(self.tasks) < self.slots:
            self.tasks[task_id] = asyncio.create_task(self._run_task(task_id, message))
        else:
            self.waiting[task_id] = message

    def _start_waiting(self) -> None:
        """A slot is free: start the request that has waited longest."""
        import asyncio

        if self.waiting and self.accepting and len(self.tasks) < self.slots:
            task_id = next(iter(self.waiting))
            message = self.waiting.pop(task_id)
            self.tasks[task_id] = asyncio.create_task(self._run_task(task_id, message))

    def _cancel(self, task_id: object) -> None:
        if isinstance(task_id, str) and self.waiting.pop(task_id, None) is not None:
            self._answer_soon(_failure_line(task_id, "cancelled: the agent cancelled this task",
                                            retry=True, error_type="Cancelled"))
            return
        running = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if running is None:
            return
        assert isinstance(task_id, str)
        if task_id in self.in_threads:
            print(
                f"task_sdk: cannot cancel task {task_id}: its sync handler runs in a thread and "
                "cannot be interrupted; it runs to completion",
                file=sys.stderr,
                flush=True,
            )
            return
        self.cancel_requested.add(task_id)
        running.cancel()

    async def _run_task(self, task_id: str, message: dict[str, Any]) -> None:
        import asyncio

        try:
            line = await self._execute(task_id, message)
        except asyncio.CancelledError:
            line = _failure_line(
                task_id,
                "cancelled: the agent cancelled this task",
                retry=True,
                error_type="Cancelled",
            )
        except BaseException as exc:  # SystemExit in a handler, or an SDK bug: still answer
            line = _failure_line(
                task_id, _exception_line(exc), retry=True, error_type=type(exc).__name__
            )
            if not isinstance(exc, Exception):
                self.channel.send_line(line)
                raise
        finally:
            self.tasks.pop(task_id, None)
            self.cancel_requested.discard(task_id)
            if not self.accepting and not self.tasks:
                self.inbox.put_nowait(_WAKE)
        self._answer_soon(line)
        self._start_waiting()

    def _prepare(self, task_id: str, message: dict[str, Any]
                 ) -> tuple[TaskContext, registry.Handler, Any] | bytes:
        """The task's context, handler and payload, or the failure line to answer with."""
        ctx = TaskContext(
            id=task_id,
            type=str(message.get("type") or ""),
            queue=str(message.get("queue") or ""),
            retry_count=_as_int(message.get("retry_count")),
            max_retry=_as_int(message.get("max_retry")),
            deadline=_handler_deadline(message, time.time()),
            timeout=_as_float(message.get("timeout")),
        )
        handler = registry.find_handler(ctx.type)
        if handler is None:
            served = ", ".join(sorted(registry.handlers())) or "nothing"
            return _failure_line(
                task_id,
                f"HandlerNotFound: no handler for task type {ctx.type!r}; this child serves: "
                f"{served}",
                retry=True,
                error_type="HandlerNotFound",
            )
        try:
            payload = _decode_payload(message)
        except ValueError as exc:
            return _failure_line(task_id, str(exc), retry=False, error_type="BadPayload")
        return ctx, handler, payload

    async def _execute(self, task_id: str, message: dict[str, Any]) -> bytes:
        if batching.is_batch(message):
            return await batching.run_async(self, message)
        if "traceparent" in message and tracing.wanted(message):
            return await tracing.run_async(message, lambda: self._execute_one(task_id, message))
        return await self._execute_one(task_id, message)

    async def _execute_one(self, task_id: str, message: dict[str, Any]) -> bytes:
        prepared = self._prepare(task_id, message)
        if isinstance(prepared, bytes):
            return prepared
        ctx, handler, payload = prepared
        if handler.batch is not None:  # a batched type sent alone (one_shot, an older agent)
            return await batching.run_async(self, batching.alone(task_id, message))
        started_at = time.time()
        _set_current(ctx)
        try:
            result = await self._call(handler, payload, ctx)
        except Exception as exc:
            return self._failure_for(task_id, ctx, started_at, exc)
        return _success_line(task_id, result)

    def _failure_for(self, task_id: str, ctx: TaskContext, started_at: float,
                     exc: Exception) -> bytes:
        """The answer for a handler that raised: timeout, SkipRetry, RetryAfter or an error."""
        if isinstance(exc, mixed.Cancelled):
            return _failure_line(task_id, "cancelled: the agent cancelled this task", retry=True,
                                 error_type="Cancelled")
        if isinstance(exc, TimeoutError) and getattr(exc, "_task_sdk_deadline", False):
            return _failure_line(
                task_id, _deadline_text(ctx, started_at), retry=True, error_type="Timeout"
            )
        if isinstance(exc, SkipRetry):
            return _failure_line(task_id, str(exc) or "SkipRetry", retry=False, error_type="SkipRetry")
        if isinstance(exc, RetryAfter):
            return _failure_line(
                task_id, exc.message, retry=True, error_type="RetryAfter", retry_in=exc.seconds
            )
        return self._exception_response(task_id, exc)

    # -- inline mode: sync handlers only, one thread ---------------------------------------

    def _inline_possible(self) -> bool:
        """With one handler thread and any sync handler (one handler at a time, async ones
        included: mixed.py), a plain read-handle-write loop on this thread does the same work
        as the event loop + thread pool, several times cheaper per task (no thread
        hand-offs, no loop wake-ups)."""
        assert self.settings is not None
        return self.settings.sync_threads == 1 and any(
            not h.is_async for h in registry.handlers().values())

    def _serve_inline(self) -> None:
        """Read, run, answer. While more requests are already waiting and handlers are
        quick, answers are held and written together (one write and one wake-up of the
        agent for many tasks). They are written before waiting for input, at ANSWER_BATCH
        answers, once the oldest is ANSWER_HOLD seconds old, right after a task that took
        longer than that, and before running a handler whose last run did."""
        stopping = False

        def on_sigterm(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            if not busy:
                raise _Stop

        busy = False
        held = self._held
        channel = self.channel
        clock = time.perf_counter
        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            while not stopping:
                if held and not channel.line_waiting():
                    busy = True  # a SIGTERM now must not cut the write short
                    self._flush_answers()
                    busy = False
                    if stopping:
                        break
                try:
                    line = channel.read_line()
                except _Stop:
                    break
                if line is None:
                    break
                busy = True
                started = clock()
                answer = self._inline_line(line)
                if answer is not None and self.once:  # no watchdog thread for one answer
                    channel.send_line(answer)
                    break
                if answer is not None:
                    self._hold(answer, started)
                    now = clock()
                    if (len(held) >= ANSWER_BATCH or now - self._held_since > ANSWER_HOLD
                            or now - started > ANSWER_HOLD or self.once):
                        self._flush_answers()
                busy = False
                if self.once and answer is not None:
                    break
        finally:
            self._flush_answers()
            signal.signal(signal.SIGTERM, previous)

    def _inline_line(self, line: bytes) -> bytes | None:
        try:
            message = json.loads(line)
        except ValueError:
            print(f"task_sdk: ignoring a request line that is not JSON: {line[:200]!r}",
                  file=sys.stderr, flush=True)
            return None
        if not isinstance(message, dict) or "cancel" in message:
            return None  # a sync handler cannot be cancelled: it runs to completion
        if batching.is_batch(message):
            return batching.run_inline(self, message)
        task_id = message.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            print(f"task_sdk: ignoring a request without a task_id: {line[:200]!r}",
                  file=sys.stderr, flush=True)
            return None
        if "traceparent" in message and tracing.wanted(message):
            return tracing.run(message, lambda: self._inline_task(task_id, message))
        return self._inline_task(task_id, message)

    def _inline_task(self, task_id: str, message: dict[str, Any]) -> bytes:
        prepared = self._prepare(task_id, message)
        if isinstance(prepared, bytes):
            return prepared
        ctx, handler, payload = prepared
        if handler.batch is not None:  # a batched type sent alone (one_shot, an older agent)
            return batching.run_inline(self, batching.alone(task_id, message))
        func = handler.func
        if self._held and func in self._slow:
            self._flush_answers()  # do not keep answers waiting through a slow handler
        started_at = time.time()
        _set_current(ctx)
        try:
            if handler.ctx_mode == "positional":
                result = func(payload, self.ctx)
            elif handler.ctx_mode == "keyword":
                result = func(payload, ctx=self.ctx)
            else:
                result = func(payload)
            if isinstance(result, Awaitable):  # an async handler (mixed child), or a coroutine
                if self._inline_async is None:
                    self._inline_async = mixed.InlineAsync(self.channel)
                result = self._inline_async.run(task_id, result, ctx.deadline)
        except Exception as exc:
            return self._failure_for(task_id, ctx, started_at, exc)
        finally:
            if time.time() - started_at > ANSWER_HOLD:
                self._slow.add(func)
            else:
                self._slow.discard(func)
        return _success_line(task_id, result)

    def _exception_response(self, task_id: str, exc: Exception) -> bytes:
        print(f"task_sdk: task {task_id} failed:", file=sys.stderr)
        _traceback().print_exception(exc, file=sys.stderr)
        sys.stderr.flush()
        return _failure_line(
            task_id, _exception_line(exc), retry=True, error_type=type(exc).__name__
        )

    async def _call(self, handler: registry.Handler, payload: Any, ctx: TaskContext) -> Any:
        import asyncio

        if handler.ctx_mode == "positional":
            call = functools.partial(handler.func, payload, self.ctx)
        elif handler.ctx_mode == "keyword":
            call = functools.partial(handler.func, payload, ctx=self.ctx)
        else:
            call = functools.partial(handler.func, payload)
        if handler.is_async:
            return await _with_deadline(call(), ctx.deadline)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        self.in_threads.add(ctx.id)
        try:
            result = await loop.run_in_executor(self.executor, context.run, call)
        finally:
            self.in_threads.discard(ctx.id)
        if isinstance(result, Awaitable):  # a sync function that returned a coroutine
            result = await _with_deadline(result, ctx.deadline)
        return result


class _HeldAnswerWatchdog:
    """A thread that writes the answers the inline loop holds once the oldest is
    ``STALE`` seconds old: the loop itself writes them only between handlers, so without
    this a handler that hangs would keep the answers before it, and the agent would think
    an earlier task was still running (and blame it for the hang). It sleeps while
    nothing is held."""

    STALE = 0.005

    def __init__(self, server: _Server) -> None:
        self.server = server
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="task_sdk-answers", daemon=True).start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        server = self.server
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                time.sleep(self.STALE)
                with server._held_lock:
                    if not server._held:
                        break
                    if time.perf_counter() - server._held_since < self.STALE:
                        continue
                    data = b"".join(server._held)
                    server._held.clear()
                    try:
                        server.channel.send_line(data)
                    except OSError:
                        return


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_coroutine(awaitable: Any) -> Any:
    """The value of an awaitable, from synchronous code (a fresh event loop)."""
    import asyncio

    return asyncio.run(_awaited(awaitable))


async def _with_deadline(awaitable: Any, deadline: float | None) -> Any:
    """Await ``awaitable``, cancelling it when the task's deadline passes."""
    import asyncio

    if deadline is None:
        return await awaitable
    timeout = asyncio.timeout(max(deadline - time.time(), 0.0))
    try:
        async with timeout:
            return await awaitable
    except TimeoutError as exc:
        if timeout.expired():
            exc._task_sdk_deadline = True  # type: ignore[attr-defined]
        raise


def _decode_payload(message: dict[str, Any]) -> Any:
    if "payload_b64" in message:
        encoded = message["payload_b64"]
        if not isinstance(encoded, str):
            raise ValueError("BadPayload: payload_b64 must be a base64 string")
        try:
            import base64

            return base64.b64decode(encoded, validate=True)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise ValueError(f"BadPayload: payload_b64 is not valid base64 ({exc})") from None
    return message.get("payload")


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _success_line(task_id: str, result: Any) -> bytes:
    _progress_finish(task_id)  # a progress report still held goes out before the answer
    try:
        encoded = json.dumps(result, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        data = encoded.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        return _failure_line(
            task_id,
            f"ResultNotSerializable: the handler returned a {type(result).__name__} that cannot "
            f"be encoded as JSON ({exc}); return dicts, lists, strings, numbers, booleans or None",
            retry=False,
            error_type="ResultNotSerializable",
        )
    return (
        b'{"task_id":'
        + json.dumps(task_id).encode()
        + b',"result":'
        + data
        + b',"error":null,"retry":false}\n'
    )


def _failure_line(
    task_id: str, error: str, *, retry: bool, error_type: str, retry_in: float | None = None
) -> bytes:
    _progress_finish(task_id)
    message: dict[str, Any] = {
        "task_id": task_id,
        "result": None,
        "error": error or error_type,
        "retry": retry,
        "error_type": error_type,
    }
    if retry_in is not None:
        message["retry_in"] = retry_in
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
