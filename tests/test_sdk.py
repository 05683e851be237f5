"""task_sdk seen from the agent's side of the pipes: real child processes, raw JSON lines."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import task_sdk
from task_sdk import RetryAfter, current_task, registry

ROOT = Path(__file__).resolve().parents[1]
CHILDREN = Path(__file__).parent / "children"


class RawChild:
    """A child process spoken to line by line, the way the agent does."""

    def __init__(self, script: Path, env: dict[str, str] | None = None) -> None:
        child_env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "RUNDOWN_PROTOCOL": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=script.parent,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr = b""
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def send(self, message: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10.0) -> dict | None:
        """The next protocol message (JSON objects only), or None at end of output."""
        give_up = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(give_up - time.monotonic(), 0.01))
            if line is None:
                return None
            try:
                value = json.loads(line)
            except ValueError:
                continue  # output printed before task_sdk took over stdout
            if isinstance(value, dict):
                return value

    def ready(self) -> dict:
        message = self.recv()
        assert message is not None and message["status"] == "ready", message
        return message

    def ask(self, task_type: str, payload=None, **fields) -> dict:
        task_id = fields.pop("task_id", f"{task_type}-{time.monotonic_ns()}")
        self.send({"task_id": task_id, "type": task_type, "payload": payload, **fields})
        answer = self.recv()
        assert answer is not None and answer["task_id"] == task_id, answer
        return answer

    def close(self) -> int:
        """Close stdin (end of requests) and wait for the exit; the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def children():
    started: list[RawChild] = []

    def start(script: Path | str = "sdk_app.py", **env: str) -> RawChild:
        path = script if isinstance(script, Path) else CHILDREN / script
        child = RawChild(path, env)
        started.append(child)
        return child

    yield start
    for child in started:
        child.cleanup()


@pytest.fixture
def app_file(tmp_path):
    def write(source: str) -> Path:
        path = tmp_path / "app.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


# -- start-up -------------------------------------------------------------------------------


def test_ready_announces_protocol_types_and_limits(children):
    child = children(RUNDOWN_MAX_IN_FLIGHT="8", RUNDOWN_SYNC_THREADS="3")
    ready = child.ready()
    assert ready["protocol"] == 1 and ready["pid"] == child.proc.pid
    # the app has sync handlers: a slot per handler thread (async handlers share them)
    assert ready["slots"] == 3 and ready["sync_threads"] == 3 and ready["async_limit"] == 8
    assert {"*", "echo", "email:send", "image:resize"} <= set(ready["task_types"])
    assert child.close() == 0


def test_sync_only_child_accepts_the_agents_limit_and_queues_for_threads(children, app_file):
    child = children(
        app_file("""
        from task_sdk import run, task

        @task
        def work(payload):
            return payload

        run()
    """),
        RUNDOWN_MAX_IN_FLIGHT="10",
        RUNDOWN_SYNC_THREADS="2",
    )
    ready = child.ready()
    assert ready["slots"] == 2 and ready["sync_threads"] == 2 and ready["async_limit"] == 10


def test_stdout_is_isolated_from_the_protocol(children):
    child = children()
    child.ready()
    answer = child.ask("print_heavy", {"lines": 200})
    assert answer == {
        "task_id": answer["task_id"],
        "result": {"printed": 200},
        "error": None,
        "retry": False,
    }
    child.ask("partial")
    assert child.ask("echo", "after")["result"] == "after"
    assert child.close() == 0
    stdout_lines = []
    while (line := child.lines.get(timeout=1)) is not None:
        stdout_lines.append(line)
    assert stdout_lines == []  # everything printed went to stderr
    assert b"noise line 199" in child.stderr
    assert b"raw write to fd 1" in child.stderr
    assert b"partial line without newlineraw partial without newline" in child.stderr
    assert b"after task_sdk is imported" in child.stderr


def test_input_cannot_steal_protocol_lines(children):
    child = children()
    child.ready()
    answer = child.ask("input")
    assert answer["error"] == "EOFError: EOF when reading a line" and answer["retry"] is True
    assert child.ask("echo", 1)["result"] == 1


def test_load_failure_is_a_startup_error(children):
    child = children(CHILD_LOAD_FAIL="1")
    assert child.recv() == {
        "status": "error",
        "error": "RuntimeError: model file missing: models/weights.bin",
    }
    assert child.close() == 1
    assert b"Traceback" in child.stderr


def test_import_failure_is_a_startup_error(children):
    child = children(CHILD_IMPORT_FAIL="1")
    assert child.recv() == {
        "status": "error",
        "error": "ImportError: No module named 'missing_dependency'",
    }
    assert child.proc.wait(timeout=10) == 1


def test_no_handler_is_a_startup_error(children, app_file):
    child = children(app_file("from task_sdk import run\nrun()\n"))
    message = child.recv()
    assert message["status"] == "error"
    assert message["error"].startswith("no task handler registered: decorate a function with @task")


def test_bad_limit_variable_is_a_startup_error(children):
    child = children(RUNDOWN_MAX_IN_FLIGHT="lots")
    assert child.recv() == {
        "status": "error",
        "error": "environment variable RUNDOWN_MAX_IN_FLIGHT must be a whole number >= 1, "
        "got 'lots'",
    }


# -- outcomes -------------------------------------------------------------------------------


def test_outcomes(children):
    child = children()
    child.ready()
    ok = child.ask("echo", {"a": [1, 2]})
    assert (ok["result"], ok["error"], ok["retry"]) == ({"a": [1, 2]}, None, False)
    failed = child.ask("fail", 7)
    assert failed["error"] == "ValueError: bad input: 7" and failed["retry"] is True
    assert failed["error_type"] == "ValueError"
    skipped = child.ask("skip")
    assert (skipped["error"], skipped["retry"]) == ("invoice 42 does not exist", False)
    later = child.ask("retry_after")
    assert (later["retry"], later["retry_in"]) == (True, 7.5)
    not_json = child.ask("unserialisable")
    assert not_json["retry"] is False and not_json["error_type"] == "ResultNotSerializable"
    assert "Object of type set is not JSON serializable" in not_json["error"]
    nan = child.ask("nan")
    assert nan["error_type"] == "ResultNotSerializable" and "Out of range float" in nan["error"]
    assert child.close() == 0
    assert b"ValueError: bad input: 7" in child.stderr  # the traceback goes to the log


def test_unknown_type_without_default_handler(children, app_file):
    child = children(
        app_file("""
        from task_sdk import run, task

        @task("a")
        def a(payload):
            return 1

        run()
    """)
    )
    child.ready()
    answer = child.ask("b")
    assert answer["retry"] is True and answer["error_type"] == "HandlerNotFound"
    assert answer["error"] == "HandlerNotFound: no handler for task type 'b'; this child serves: a"


def test_payload_forms(children):
    child = children()
    child.ready()
    raw = child.ask("payload_kind", None, payload_b64="AP8=")
    assert raw["result"] == {"kind": "bytes", "value": "00ff"}
    assert child.ask("payload_kind", {"x": 1})["result"] == {"kind": "dict", "value": {"x": 1}}
    assert child.ask("payload_kind", None)["result"] == {"kind": "NoneType", "value": None}
    bad = child.ask("payload_kind", None, payload_b64="@@@")
    assert bad["retry"] is False and bad["error"].startswith("BadPayload")


def test_task_context_in_sync_and_async_handlers(children):
    # two threads: the thread pool path (with one, this mixed child runs its handlers inline
    # on the main thread: tests/test_mixed_child.py)
    child = children(RUNDOWN_SYNC_THREADS="2")
    child.ready()
    info = child.ask(
        "context",
        None,
        task_id="t-42",
        queue="critical",
        retry_count=2,
        max_retry=9,
        deadline=4102444800.0,
        timeout=60,
    )["result"]
    # the handler's deadline: its timeout counted from its start, capped by the task's deadline
    assert abs(info.pop("deadline") - (time.time() + 60)) < 5
    assert info == {
        "id": "t-42",
        "type": "context",
        "queue": "critical",
        "retry_count": 2,
        "max_retry": 9,
        "timeout": 60.0,
        "thread": "task_sdk-handler_0",
    }
    assert child.ask("context_async", None, task_id="t-43")["result"] == {"id": "t-43"}


def test_ctx_from_load_reaches_handlers_that_accept_it(children, app_file):
    child = children(
        app_file("""
        from task_sdk import load, run, task

        @load
        async def setup():
            return {"db": "connected"}

        @task("positional")
        def positional(payload, ctx):
            return ctx["db"]

        @task("keyword")
        async def keyword(payload, *, ctx):
            return ctx["db"] + "!"

        @task("none")
        def none(payload):
            return payload

        run()
    """)
    )
    child.ready()
    assert child.ask("positional", 0)["result"] == "connected"
    assert child.ask("keyword", 0)["result"] == "connected!"
    assert child.ask("none", 5)["result"] == 5


# -- concurrency, cancellation, shutdown ------------------------------------------------------


def test_async_handlers_run_concurrently_up_to_the_limit(children):
    child = children(RUNDOWN_MAX_IN_FLIGHT="3", RUNDOWN_SYNC_THREADS="3")
    child.ready()
    for n in range(4):
        child.send({"task_id": f"s{n}", "type": "sleep_async", "payload": {"seconds": 0.4}})
    answers = [child.recv() for _ in range(4)]
    results = {a["task_id"]: a["result"] for a in answers}
    first_three = [results[f"s{n}"] for n in range(3)]
    assert max(r["start"] for r in first_three) < min(r["end"] for r in first_three)
    assert results["s3"]["start"] >= min(r["end"] for r in first_three)  # waited for a slot


def test_sync_handlers_are_sequential_by_default(children):
    child = children(RUNDOWN_MAX_IN_FLIGHT="2")
    child.ready()
    for n in range(2):
        child.send({"task_id": f"s{n}", "type": "sleep_sync", "payload": {"seconds": 0.2}})
    first, second = sorted((child.recv()["result"] for _ in range(2)), key=lambda r: r["start"])
    assert second["start"] >= first["end"]


def test_cancel_message_cancels_an_async_handler(children):
    child = children(RUNDOWN_MAX_IN_FLIGHT="2")
    child.ready()
    child.send({"task_id": "long", "type": "sleep_async", "payload": {"seconds": 30}})
    time.sleep(0.2)
    child.send({"cancel": "long"})
    child.send({"cancel": "not-running"})  # ignored
    answer = child.recv()
    assert answer["task_id"] == "long" and answer["retry"] is True
    assert answer["error"] == "cancelled: the agent cancelled this task"
    assert child.ask("echo", "fine")["result"] == "fine"


def test_cancel_cannot_interrupt_a_sync_handler(children):
    child = children(RUNDOWN_SYNC_THREADS="2")  # the thread pool path, as above
    child.ready()
    child.send({"task_id": "sync", "type": "sleep_sync", "payload": {"seconds": 0.3}})
    time.sleep(0.1)
    child.send({"cancel": "sync"})
    answer = child.recv()
    assert answer["task_id"] == "sync" and answer["error"] is None  # ran to completion
    child.close()
    assert b"cannot cancel task sync: its sync handler runs in a thread" in child.stderr


def test_deadline_cancels_async_handlers(children):
    child = children()
    child.ready()
    answer = child.ask("hang_async", None, deadline=time.time() + 0.3, timeout=0.3)
    assert (answer["error"], answer["retry"]) == (
        "context deadline exceeded: task exceeded its deadline of 0.3s "
        "(its async handler was cancelled)",
        True,
    )


def test_sigterm_finishes_tasks_in_flight_then_exits(children):
    child = children()
    child.ready()
    child.send({"task_id": "last", "type": "sleep_sync", "payload": {"seconds": 0.5}})
    time.sleep(0.1)
    child.proc.send_signal(signal.SIGTERM)
    answer = child.recv()
    assert answer["task_id"] == "last" and answer["error"] is None
    assert child.proc.wait(timeout=10) == 0


def test_run_once_answers_one_request_and_exits(children):
    child = children(CHILD_MODE="once")
    child.ready()
    child.send({"task_id": "one", "type": "echo", "payload": 1})
    child.send({"task_id": "two", "type": "echo", "payload": 2})
    assert child.recv()["task_id"] == "one"
    assert child.recv() is None
    assert child.proc.wait(timeout=10) == 0


def test_run_once_without_a_request_exits_quietly(children):
    child = children(CHILD_MODE="once")
    child.ready()
    assert child.close() == 0
    assert child.recv() is None


def test_garbage_requests_are_ignored(children):
    child = children()
    child.ready()
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"not json\n[1]\n{}\n\n")
    child.proc.stdin.flush()
    assert child.ask("echo", "still here")["result"] == "still here"
    child.close()
    assert b"ignoring a request line that is not JSON" in child.stderr


# -- in-process API ---------------------------------------------------------------------------


@pytest.fixture
def clean_registry():
    saved_handlers, saved_loader = registry.handlers(), registry.loader()
    registry.clear()
    yield
    registry.clear()
    registry._handlers.update(saved_handlers)
    registry._loader = saved_loader


def test_task_decorator_forms(clean_registry):
    @task_sdk.task
    def default(payload):
        return payload

    @task_sdk.task("email:send")
    async def email(payload, ctx):
        return ctx

    @task_sdk.task(name="image:resize")
    def image(payload, *, ctx):
        return ctx

    handlers = registry.handlers()
    assert set(handlers) == {"*", "email:send", "image:resize"}
    assert (handlers["*"].ctx_mode, handlers["*"].is_async) == ("none", False)
    assert (handlers["email:send"].ctx_mode, handlers["email:send"].is_async) == (
        "positional",
        True,
    )
    assert handlers["image:resize"].ctx_mode == "keyword"
    assert registry.find_handler("other").func is default
    assert default(3) == 3  # the decorator returns the function itself
    with pytest.raises(TypeError, match="either positionally or as name="):
        task_sdk.task("a", name="b")


def test_current_task_outside_a_handler():
    with pytest.raises(LookupError, match="outside a task handler"):
        current_task()


def test_retry_after_validates_its_delay():
    assert RetryAfter(3).seconds == 3.0
    assert str(RetryAfter(2.5)) == "retry requested in 2.5s"
    with pytest.raises(ValueError, match="0 seconds or more"):
        RetryAfter(-1)


def test_handler_shapes_read_from_code_objects_match_inspect():
    import functools
    import inspect

    from task_sdk import registry

    def only(p): ...
    def with_ctx(p, ctx): ...
    def positional_only(p, /, ctx): ...
    def keyword_ctx(p, *, ctx): ...
    def keyword_other(p, *, other=None): ...
    def var_args(*args): ...
    def defaults(p, q=1): ...
    def kwargs_only(p, **kw): ...
    async def coro(p, ctx): ...
    async def coro_kw(p, *, ctx=None): ...

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)
        return wrapper

    class Callable:
        def __call__(self, p, ctx): ...

        def method(self, p): ...

    shapes = [only, with_ctx, positional_only, keyword_ctx, keyword_other, var_args, defaults,
              kwargs_only, coro, coro_kw, decorator(with_ctx), decorator(only),
              functools.partial(with_ctx, 1), Callable(), Callable().method, lambda p: p]
    for func in shapes:
        assert registry._ctx_mode(func) == registry._ctx_mode_by_signature(func), func
        assert registry.is_coroutine_function(func) == inspect.iscoroutinefunction(func), func


def test_importing_task_sdk_leaves_heavy_modules_unimported():
    """Every child, and every one_shot task, pays for what task_sdk imports at start."""
    code = ("import sys, task_sdk; heavy = ('typing', 'inspect', 'dataclasses', 'asyncio', "
            "'traceback', 'base64'); print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.stdout.strip() == "[]", out.stdout


# -- answers written together ---------------------------------------------------------------

BURST_APP = """
from task_sdk import run, task
import time

@task("fast")
def fast(payload):
    return payload

@task("slow")
def slow(payload):
    time.sleep(payload)
    return payload

run()
"""


def _write_syscalls(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))


def _send_at_once(child: RawChild, messages: list[dict]) -> None:
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    child.proc.stdin.flush()


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/<pid>/io")
def test_inline_answers_to_waiting_requests_go_out_together(children, app_file):
    child = children(app_file(BURST_APP), RUNDOWN_MAX_IN_FLIGHT="500")
    child.ready()
    before = _write_syscalls(child.proc.pid)
    _send_at_once(child, [{"task_id": f"t{i}", "type": "fast", "payload": i} for i in range(300)])
    answers = [child.recv() for _ in range(300)]
    writes = _write_syscalls(child.proc.pid) - before
    assert sorted(a["result"] for a in answers) == list(range(300))
    assert all(a["task_id"] == f"t{a['result']}" and a["error"] is None for a in answers)
    assert writes <= 300 // 64 + 20, writes  # one write per task would be 300
    assert child.ask("fast", "alone")["result"] == "alone"  # a lone request is answered at once


def test_answers_do_not_wait_for_a_handler_known_to_be_slow(children, app_file):
    child = children(app_file(BURST_APP), RUNDOWN_MAX_IN_FLIGHT="10")
    child.ready()
    assert child.ask("slow", 0.01)["result"] == 0.01  # now known to be slow
    sent = time.monotonic()
    _send_at_once(child, [{"task_id": "a", "type": "fast", "payload": 1},
                          {"task_id": "b", "type": "fast", "payload": 2},
                          {"task_id": "s", "type": "slow", "payload": 2.0}])
    first_two = {child.recv()["task_id"], child.recv()["task_id"]}
    assert first_two == {"a", "b"} and time.monotonic() - sent < 1.5
    assert child.recv()["task_id"] == "s"


def test_protocol_channel_reads_lines_across_chunks(tmp_path):
    from task_sdk.channel import ProtocolChannel

    read_fd, write_fd = os.pipe()
    out_r, out_w = os.pipe()
    channel = ProtocolChannel(read_fd, out_w)
    os.write(write_fd, b'{"a": 1}\n\n  {"b"')
    assert channel.read_line() == b'{"a": 1}'
    assert not channel.line_waiting()  # the blank line is skipped when read, the rest is partial
    os.write(write_fd, b': 2}\r\n{"c": 3}\n{"d"')
    assert channel.read_line() == b'{"b": 2}'
    assert channel.line_waiting()
    assert channel.read_line() == b'{"c": 3}'


    def write_slowly() -> None:  # a long line arriving over several reads
        for _ in range(5):
            os.write(write_fd, b"x" * 50_000)
            time.sleep(0.02)
        os.write(write_fd, b": 4}")
        os.close(write_fd)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    assert channel.read_line() == b'{"d"' + b"x" * 250_000 + b": 4}"  # its end at end of input
    assert channel.read_line() is None
    writer.join()
    for fd in (read_fd, out_r, out_w):
        os.close(fd)
