"""The child-process supervisor with real child processes and real pipes (no mocks).

Every scenario checks the outcome the task gets AND that the pool still serves a normal task
afterwards. Children are tests/children/*.py run with the current interpreter (no venv).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest

from agent.broker import DequeuedTask, TaskMessage
from agent.supervisor import (
    Child,
    ChildPool,
    ChildSpec,
    ChildStartupError,
    CrashTracker,
    Outcome,
    PoolUnavailable,
    RestartPolicy,
    StartupCommandError,
    TaskRequest,
    build_child_env,
    create_pool,
    resolve_argv,
)
from agent.supervisor.protocol import (
    LineSplitter,
    Output,
    OversizedLine,
    Ready,
    Response,
    encode_request,
    outcome_from_response,
    parse_line,
)

CHILDREN = Path(__file__).parent / "children"
FAST_RESTART = RestartPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.1)
MiB = 1024 * 1024


def make_spec(script: str = "sdk_app.py", *, env: dict[str, str] | None = None, **overrides):
    settings = {
        "startup_timeout": 10.0,
        "queue": "test",
        "stop_grace": 1.0,
        "deadline_grace": 0.3,
    }
    settings.update(overrides)
    return ChildSpec(
        argv=[sys.executable, str(CHILDREN / script)],
        cwd=CHILDREN,
        env=build_child_env(env or {}, {}, None),
        **settings,
    )


def request(
    task_type: str,
    payload=None,
    *,
    raw: bytes | None = None,
    deadline_in=10.0,
    timeout: float | None = None,
) -> TaskRequest:
    return TaskRequest(
        task_id=uuid.uuid4().hex,
        type=task_type,
        payload=raw if raw is not None else json.dumps(payload).encode(),
        queue="test",
        deadline=time.time() + deadline_in if deadline_in is not None else None,
        timeout=timeout,
    )


@pytest.fixture
async def pools():
    made: list[ChildPool] = []

    async def make(
        spec: ChildSpec | None = None,
        *,
        mode="long_running",
        processes=1,
        restart=FAST_RESTART,
        start=True,
    ) -> ChildPool:
        pool = create_pool(spec or make_spec(), mode=mode, processes=processes, restart=restart)
        made.append(pool)
        if start:
            await pool.start()
        return pool

    yield make
    await asyncio.gather(*(pool.stop(grace=1.0) for pool in made))


async def serves(pool: ChildPool, within: float = 10.0) -> int:
    """Assert the pool runs a normal task (waiting out restarts); return the child's pid."""
    give_up = time.monotonic() + within
    while True:
        try:
            echo = await pool.run(request("echo", {"still": "serving"}))
            break
        except PoolUnavailable:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.05)
    assert echo == Outcome("success", result=b'{"still":"serving"}')
    pid = await pool.run(request("pid"))
    assert pid.kind == "success"
    return int(pid.result)


def pids(pool: ChildPool) -> set[int]:
    return {s["pid"] for s in pool.status() if s["state"] == "ready"}


# -- output the protocol must survive --------------------------------------------------------


async def test_print_heavy_handler_keeps_protocol_intact(caplog):
    caplog.set_level(logging.INFO, logger="agent.child")
    child = Child(make_spec())
    await child.start()
    try:
        outcome = await child.run(request("print_heavy", {"lines": 5000}))
        assert outcome == Outcome("success", result=b'{"printed":5000}')
        assert len(child.stderr_tail) == 50  # the ring buffer keeps the last 50 lines
        assert child.stderr_tail[-1] == "raw write to fd 1"
        noise = [r for r in caplog.records if "noise line" in r.getMessage()]
        assert len(noise) == 5000
        assert noise[0].queue == "test" and noise[0].pid == child.pid
        again = await child.run(request("echo", [1, 2]))
        assert again == Outcome("success", result=b"[1,2]")
    finally:
        await child.stop()


async def test_partial_line_without_newline(pools, caplog):
    caplog.set_level(logging.INFO, logger="agent.child")
    pool = await pools()
    before = pids(pool)
    outcome = await pool.run(request("partial"))
    assert outcome == Outcome("success", result=b'"ok"')
    assert await serves(pool) in before  # same child: nothing was corrupted


async def test_runqy_child_partial_line_is_salvaged(pools, caplog):
    caplog.set_level(logging.INFO, logger="agent.child")
    pool = await pools(make_spec("runqy_style.py"))
    outcome = await pool.run(request("any", {"action": "partial"}))
    assert outcome.kind == "success"
    assert json.loads(outcome.result)["greeting"] == "hello"
    assert any("stdout: loading model..." in r.getMessage() for r in caplog.records)
    await serves_runqy(pool)


async def test_garbage_stdout_lines_are_logged_not_fatal(pools, caplog):
    caplog.set_level(logging.INFO)
    pool = await pools(make_spec("runqy_style.py"))
    outcome = await pool.run(request("any", {"action": "garbage"}))
    assert outcome.kind == "success"
    text = caplog.text
    assert "stdout: not json at all {" in text
    assert "json without task_id or status" in text
    assert "task_id is not a non-empty string" in text
    assert "answered task some-other-task, which it is not running" in text
    await serves_runqy(pool)


async def test_oversized_stdout_line_is_discarded_and_reader_keeps_going(pools, caplog):
    pool = await pools(make_spec("runqy_style.py", line_limit=1 * MiB))
    outcome = await pool.run(request("any", {"action": "oversized", "size": 3 * MiB}))
    assert outcome.kind == "success"
    assert "over the limit of 1048576 bytes; the line was discarded" in caplog.text
    await serves_runqy(pool)


async def test_oversized_response_fails_only_its_task(pools):
    pool = await pools(make_spec(line_limit=1 * MiB))
    big = {"blob": "y" * (2 * MiB)}
    outcome = await pool.run(request("echo", big))
    assert outcome.kind == "archive"
    assert outcome.error.startswith("ResponseTooLarge: the child's answer was")
    await serves(pool)


# -- crashes, hangs, recycling ---------------------------------------------------------------


async def test_crash_with_exit_code_fails_in_flight_task_and_restarts(pools):
    pool = await pools()
    (old,) = pids(pool)
    outcome = await pool.run(request("exit", {"code": 3}))
    assert outcome.kind == "retry"
    assert f"child process {old} exited with code 3 while running this task" in outcome.error
    assert "last stderr lines:" in outcome.error and "about to exit on purpose" in outcome.error
    assert await serves(pool) != old


async def test_crash_by_sigkill_says_likely_out_of_memory(pools):
    pool = await pools()
    outcome = await pool.run(request("sigkill"))
    assert outcome.kind == "retry"
    assert "was killed by SIGKILL, likely out of memory" in outcome.error
    assert "about to be killed" in outcome.error
    await serves(pool)


async def test_crash_with_several_handlers_running_charges_none_of_them_the_first_time(pools):
    pool = await pools(make_spec(threads=3))
    sleepers = [
        asyncio.create_task(pool.run(request("sleep_async", {"seconds": 5}))) for _ in range(2)
    ]
    await asyncio.sleep(0.2)
    crasher = request("exit", {"code": 9})
    crash = await pool.run(crasher)
    outcomes = [crash, *await asyncio.gather(*sleepers)]
    # no one can tell which of three handlers killed the child: all go back, uncharged
    assert [o.kind for o in outcomes] == ["requeue"] * 3
    assert all("exited with code 9" in o.error for o in outcomes)
    await serves(pool)
    # the same task kills its child again beside another: now it is the one to blame
    sleeper = asyncio.create_task(pool.run(request("sleep_async", {"seconds": 5})))
    await asyncio.sleep(0.2)
    again = await pool.run(crasher)
    assert again.kind == "retry" and "exited with code 9" in again.error
    assert (await sleeper).kind == "requeue"
    await serves(pool)


async def test_crash_with_one_handler_running_charges_it_and_requeues_the_waiting(pools):
    pool = await pools(make_spec(prefetch=2))
    (old,) = pids(pool)
    crash = asyncio.create_task(pool.run(request("exit_after", {"seconds": 0.3, "code": 9})))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(pool.run(request("echo", {"n": n}))) for n in range(2)]
    assert (await crash).kind == "retry"
    for outcome in await asyncio.gather(*waiting):
        assert outcome.kind == "requeue", outcome  # never started: never charged
    assert await serves(pool) != old


async def test_hang_past_deadline_kills_child_and_requeues_its_other_tasks(pools):
    pool = await pools(make_spec(threads=2, deadline_grace=0.25))
    (old,) = pids(pool)
    other = asyncio.create_task(pool.run(request("sleep_sync", {"seconds": 5})))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    hung = await pool.run(request("hang_sync", deadline_in=0.5, timeout=0.5))
    assert time.monotonic() - started < 0.5 + 0.5  # within 0.5 s of the deadline
    assert hung.kind == "retry"
    # its timeout and its deadline fall within a millisecond: either may be the one named
    assert re.fullmatch(r"context deadline exceeded: task exceeded its deadline of 0\.[45]\d*s "
                        r"\((its timeout|the task's deadline); "
                        rf"child process {old} killed and replaced\)", hung.error), hung.error
    requeued = await other
    assert requeued.kind == "requeue"
    assert f"child process {old} ended" in requeued.error
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    assert await serves(pool) != old


async def test_timeout_of_a_waiting_task_starts_when_its_handler_starts(pools):
    pool = await pools(make_spec(prefetch=3))
    tasks = [asyncio.create_task(pool.run(request("sleep_sync", {"seconds": 0.4}, timeout=0.7)))
             for _ in range(4)]
    outcomes = await asyncio.gather(*tasks)  # 1.6 s in all, each well inside its 0.7 s
    assert [o.kind for o in outcomes] == ["success"] * 4
    starts = sorted(json.loads(o.result)["start"] for o in outcomes)
    assert starts[-1] - starts[0] > 1.0  # they really ran one after another


async def test_async_hang_is_cancelled_at_the_deadline_by_the_sdk(pools):
    pool = await pools()
    (old,) = pids(pool)
    outcome = await pool.run(request("hang_async", deadline_in=0.4, timeout=0.4))
    assert outcome == Outcome("retry", error="context deadline exceeded: task exceeded its "
                              "deadline of 0.4s (its async handler was cancelled)")
    assert await serves(pool) == old  # the SDK answered: no need to stop the child


async def test_recycling_after_n_tasks(pools):
    pool = await pools(make_spec(max_tasks_per_child=3))
    seen = [int((await pool.run(request("pid"))).result) for _ in range(7)]
    assert seen[0] == seen[1] == seen[2]
    assert seen[3] == seen[4] == seen[5] != seen[0]
    assert seen[6] not in (seen[0], seen[3])
    await serves(pool)


async def test_recycling_when_rss_exceeds_the_limit(pools):
    pool = await pools(make_spec(max_memory_bytes=80 * MiB))
    first = await pool.run(request("alloc", {"mb": 10}))
    # The 100 MB arrive after the handler returned, so no running handler is blamed: a handler
    # that allocated them itself could be caught by the check while it runs (a slow machine).
    again = await pool.run(request("alloc_when_idle", {"mb": 100}))
    assert first.result == again.result
    give_up = time.monotonic() + 5.0
    while pids(pool) == {int(first.result)} and time.monotonic() < give_up:
        await asyncio.sleep(0.05)  # an idle child over the limit is replaced, blaming no one
    assert await serves(pool) != int(first.result)


async def test_memory_limit_stops_a_running_handler_and_blames_only_it(pools):
    pool = await pools(make_spec(max_memory_bytes=150 * MiB, prefetch=1))
    (old,) = pids(pool)
    started = time.monotonic()
    greedy = asyncio.create_task(pool.run(request("grow", {"mb": 1500}, timeout=60)))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(pool.run(request("echo", {"x": 1})))
    outcome = await greedy
    assert time.monotonic() - started < 5
    assert outcome.kind == "retry"
    assert outcome.error.startswith("memory limit exceeded (") and "> 157 MB" in outcome.error
    assert (await waiting).kind == "requeue"  # it never started: no charge
    assert await serves(pool) != old


async def test_repeated_crashes_make_the_pool_unhealthy_until_a_restart_succeeds(pools):
    policy = RestartPolicy(
        initial_delay=0.2, max_delay=2.0, factor=2.0, jitter=0.0, crash_window=60, max_crashes=3
    )
    pool = await pools(restart=policy)
    await serves(pool)
    for _ in range(3):  # crashes in a row: each restarted child crashes before serving a task
        assert (await pool.run(request("exit", {"code": 1}))).kind == "retry"
    assert pool.healthy is False
    with pytest.raises(PoolUnavailable, match="failed 3 times within 60s"):
        await pool.run(request("echo", {}))
    # the processor's Executor view: the task goes back to pending, no retry burnt
    message = TaskMessage(type="echo", payload=b"{}", id="t1", queue="test")
    dequeued = DequeuedTask(
        id="t1", queue="test", raw=b"", message=message, lease_expiry=int(time.time()) + 60
    )
    assert (await pool.execute(dequeued, time.time() + 5)).kind == "requeue"
    await serves(pool)  # the backoff probe restart succeeds
    assert pool.healthy is True


async def test_crashes_between_served_tasks_are_not_a_crash_loop(pools):
    """Poison tasks that kill their child fail on their own; the pool keeps serving, and the
    restarts after them wait the initial delay, not a growing backoff."""
    policy = RestartPolicy(
        initial_delay=0.2, max_delay=30.0, factor=4.0, jitter=0.0, crash_window=60, max_crashes=3
    )
    pool = await pools(restart=policy)
    for _ in range(5):
        await serves(pool)
        assert (await pool.run(request("exit", {"code": 1}))).kind == "retry"
        assert pool.healthy is True
        assert pool.crashes.next_delay() == 0.2  # a growing backoff: 0.2, 0.8, 3.2, ...
    await serves(pool)


def test_crash_tracker_streaks():
    """Crashes in a row back off and trip the guard; a served task, or a quiet window,
    starts the count again."""
    now = [0.0]
    policy = RestartPolicy(initial_delay=1, max_delay=60, factor=2, jitter=0, crash_window=60,
                           max_crashes=3)
    tracker = CrashTracker(policy, "q", clock=lambda: now[0], rand=lambda: 0.5)
    tracker.record("a")
    tracker.record("b")
    assert tracker.next_delay() == 2 and tracker.healthy
    tracker.served()
    tracker.record("c")
    assert tracker.next_delay() == 1 and tracker.healthy
    tracker.record("d")
    tracker.record("e")
    assert tracker.next_delay() == 4 and not tracker.healthy
    tracker.recovered()
    now[0] += 61
    tracker.record("f")
    assert tracker.next_delay() == 1 and tracker.healthy


async def test_failing_restarts_keep_the_pool_unhealthy(pools, tmp_path):
    broken = tmp_path / "broken"
    policy = RestartPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.0, max_crashes=3)
    pool = await pools(make_spec(env={"CHILD_FAIL_IF_EXISTS": str(broken)}), restart=policy)
    broken.touch()  # a bad deployment: every restart now fails in @load
    assert (await pool.run(request("exit", {"code": 1}))).kind == "retry"
    give_up = time.monotonic() + 10
    while pool.healthy and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    with pytest.raises(PoolUnavailable, match="broken deployment"):
        await pool.run(request("echo", {}))
    broken.unlink()  # fixed: the next probe restart succeeds
    await serves(pool)


# -- start-up ------------------------------------------------------------------------------


async def test_slow_load_within_the_startup_timeout(pools):
    started = time.monotonic()
    pool = await pools(make_spec(env={"CHILD_LOAD_SLEEP": "1.0"}, startup_timeout=5))
    assert time.monotonic() - started >= 1.0
    outcome = await pool.run(request("some:type", {"n": 1}))  # default handler gets ctx
    assert json.loads(outcome.result) == {
        "handler": "default",
        "payload": {"n": 1},
        "model": "tiny",
    }
    await serves(pool)


async def test_startup_timeout(pools):
    pool = await pools(make_spec(env={"CHILD_LOAD_SLEEP": "30"}, startup_timeout=0.5), start=False)
    with pytest.raises(ChildStartupError, match=r"did not report ready within 0\.5s"):
        await pool.start()
    assert pool.status() == []


async def test_startup_error_is_reported_verbatim_and_start_can_be_retried(pools, tmp_path):
    failing = await pools(make_spec(env={"CHILD_LOAD_FAIL": "1"}), start=False)
    with pytest.raises(ChildStartupError) as info:
        await failing.start()
    assert str(info.value) == "startup failed: RuntimeError: model file missing: models/weights.bin"

    once = tmp_path / "failed-once"
    pool = await pools(make_spec(env={"CHILD_FAIL_ONCE": str(once)}), start=False)
    with pytest.raises(ChildStartupError, match="first start fails on purpose"):
        await pool.start()
    await pool.start()
    await serves(pool)


async def test_import_error_after_task_sdk_import_is_reported(pools):
    pool = await pools(make_spec(env={"CHILD_IMPORT_FAIL": "1"}), start=False)
    with pytest.raises(
        ChildStartupError, match="startup failed: ImportError: No module named 'missing_dependency'"
    ):
        await pool.start()


async def test_exit_before_ready_reports_code_and_stderr(pools):
    pool = await pools(make_spec("exits_at_start.py"), start=False)
    with pytest.raises(ChildStartupError) as info:
        await pool.start()
    assert "exited with code 2 during start-up, before reporting ready" in str(info.value)
    assert "fatal: DATABASE_URL is not set" in str(info.value)


# -- what handlers return ----------------------------------------------------------------------


async def test_non_serialisable_result_is_a_clear_permanent_failure(pools):
    pool = await pools()
    (old,) = pids(pool)
    outcome = await pool.run(request("unserialisable"))
    assert outcome.kind == "archive"
    assert outcome.error.startswith("ResultNotSerializable:")
    assert "Object of type set is not JSON serializable" in outcome.error
    assert await serves(pool) == old  # the child did not crash (runqy's poison task)


async def test_outcome_kinds_from_sdk_exceptions(pools):
    pool = await pools()
    assert await pool.run(request("fail", "x")) == Outcome(
        "retry", error="ValueError: bad input: x"
    )
    assert await pool.run(request("skip")) == Outcome("archive", error="invoice 42 does not exist")
    assert await pool.run(request("retry_after")) == Outcome(
        "retry", error="rate limited by the mail provider", retry_in=7.5
    )
    await serves(pool)


async def test_two_task_types_in_one_child(pools):
    pool = await pools()
    email = await pool.run(request("email:send", {"to": "a@example.com"}))
    image = await pool.run(request("image:resize", {"size": 640}))
    assert json.loads(email.result) == {"sent_to": "a@example.com", "type": "email:send"}
    assert json.loads(image.result) == {"resized": 320, "type": "image:resize"}
    other = await pool.run(request("report:build", [1]))
    assert json.loads(other.result)["handler"] == "default"
    assert len(pids(pool)) == 1
    await serves(pool)


async def test_payload_bytes_that_are_not_json(pools):
    pool = await pools()
    outcome = await pool.run(request("payload_kind", raw=b"\x00\xffraw"))
    assert json.loads(outcome.result) == {"kind": "bytes", "value": "00ff726177"}
    await serves(pool)


async def test_task_context_reaches_the_handler(pools):
    pool = await pools()
    task = request("context", deadline_in=30, timeout=30.0)
    task = TaskRequest(task.task_id, task.type, b"", "critical", 2, 5, task.deadline, 30.0)
    info = json.loads((await pool.run(task)).result)
    assert info["id"] == task.task_id and info["queue"] == "critical"
    assert (info["retry_count"], info["max_retry"], info["timeout"]) == (2, 5, 30.0)
    assert info["deadline"] == pytest.approx(task.deadline)
    await serves(pool)


# -- concurrency -----------------------------------------------------------------------------


async def test_fifty_concurrent_async_tasks_in_one_child(pools):
    pool = await pools(make_spec(threads=50, async_limit=50))
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(pool.run(request("sleep_async", {"seconds": 0.5})) for _ in range(50))
    )
    elapsed = time.monotonic() - started
    results = [json.loads(o.result) for o in outcomes]
    assert len({r["pid"] for r in results}) == 1
    assert max(r["start"] for r in results) < min(r["end"] for r in results)  # all overlapped
    assert elapsed < 2.5
    await serves(pool)


async def test_sync_handlers_overlap_in_a_pool_of_four_threads(pools):
    pool = await pools(make_spec(threads=4))
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(pool.run(request("sleep_sync", {"seconds": 0.5})) for _ in range(4))
    )
    elapsed = time.monotonic() - started
    results = [json.loads(o.result) for o in outcomes]
    assert max(r["start"] for r in results) < min(r["end"] for r in results)
    assert len({r["thread"] for r in results}) == 4
    assert elapsed < 1.5
    await serves(pool)


async def test_tasks_go_to_the_least_busy_child(pools):
    pool = await pools(make_spec(threads=2), processes=2)
    running = [
        asyncio.create_task(pool.run(request("sleep_async", {"seconds": 0.5}))) for _ in range(4)
    ]
    await asyncio.sleep(0.1)
    assert sorted(s["in_flight"] for s in pool.status()) == [2, 2]
    results = [json.loads(o.result) for o in await asyncio.gather(*running)]
    assert len({r["pid"] for r in results}) == 2
    await serves(pool)


async def test_cancel_interrupts_an_async_handler(pools):
    pool = await pools()
    (old,) = pids(pool)
    task = request("sleep_async", {"seconds": 30})
    running = asyncio.create_task(pool.run(task))
    await asyncio.sleep(0.2)
    await pool.cancel(task.task_id)
    outcome = await asyncio.wait_for(running, 5)
    assert outcome == Outcome("retry", error="cancelled: the agent cancelled this task")
    assert await serves(pool) == old


async def test_stop_requeues_tasks_in_flight(pools):
    pool = await pools()
    running = asyncio.create_task(pool.run(request("hang_sync", deadline_in=60)))
    await asyncio.sleep(0.2)
    await pool.stop(grace=0.3)
    outcome = await running
    assert outcome.kind == "requeue"
    with pytest.raises(PoolUnavailable, match="stopping"):
        await pool.run(request("echo", {}))


# -- a child written for runqy's SDK ---------------------------------------------------------


async def serves_runqy(pool: ChildPool) -> None:
    outcome = await pool.run(request("any", {"action": "echo"}))
    assert json.loads(outcome.result) == {"echo": {"action": "echo"}, "greeting": "hello"}


async def test_runqy_python_style_child_works_unchanged(pools):
    pool = await pools(make_spec("runqy_style.py", threads=8, prefetch=4))
    assert [s["slots"] for s in pool.status()] == [1]  # it reads sequentially
    assert pool.placeable(100) == 1  # and gets no prefetch
    await serves_runqy(pool)
    failed = await pool.run(request("any", {"action": "fail"}))
    assert failed == Outcome("archive", error="runqy handler failed")  # retry omitted: permanent
    nan = await pool.run(request("any", {"action": "nan"}))
    assert nan == Outcome("success", result=b"null")  # Python's NaN is not JSON; not a hang
    noisy = await pool.run(request("any", {"action": "noise", "lines": 100}))
    assert noisy.kind == "success"
    several = await asyncio.gather(
        *(pool.run(request("any", {"action": "echo"})) for _ in range(5))
    )
    assert {o.kind for o in several} == {"success"}
    await serves_runqy(pool)


# -- one_shot --------------------------------------------------------------------------------


async def test_one_shot_runs_each_task_in_a_fresh_process(pools):
    pool = await pools(make_spec(env={"CHILD_MODE": "once"}), mode="one_shot")
    first = await pool.run(request("pid"))
    second = await pool.run(request("pid"))
    assert first.kind == second.kind == "success" and first.result != second.result
    crash = await pool.run(request("exit", {"code": 4}))
    assert crash.kind == "retry" and "exited with code 4" in crash.error
    assert pool.status() == []
    await serves(pool)


async def test_one_shot_memory_and_cpu_rlimits(pools):
    spec = make_spec(env={"CHILD_MODE": "once"}, rlimit_as_bytes=400 * MiB, rlimit_cpu_seconds=1)
    pool = await pools(spec, mode="one_shot")
    memory = await pool.run(request("alloc", {"mb": 800}))
    assert memory == Outcome("retry", error="MemoryError")
    cpu = await pool.run(request("burn_cpu"))
    assert cpu.kind == "retry" and "its CPU time limit was reached" in cpu.error
    await serves(pool)


async def test_one_shot_startup_failure_requeues_and_goes_unhealthy(pools, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    policy = RestartPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.0, max_crashes=2)
    spec = make_spec(env={"CHILD_MODE": "once", "CHILD_FAIL_IF_EXISTS": str(broken)})
    pool = await pools(spec, mode="one_shot", restart=policy)
    for _ in range(2):
        outcome = await pool.run(request("echo", {}))
        assert outcome.kind == "requeue"
        assert (
            "child process failed to start: startup failed: RuntimeError: broken" in outcome.error
        )
    assert pool.healthy is False
    broken.unlink()
    await serves(pool)  # the background probe found the deployment fixed


async def test_one_shot_cancel_stops_the_process(pools):
    pool = await pools(make_spec(env={"CHILD_MODE": "once"}), mode="one_shot")
    task = request("hang_sync", deadline_in=60)
    running = asyncio.create_task(pool.run(task))
    await asyncio.sleep(0.5)
    await pool.cancel(task.task_id)
    outcome = await asyncio.wait_for(running, 5)
    assert outcome == Outcome("retry", error="cancelled: the task was cancelled while running")
    await serves(pool)


# -- launch: command line and environment ---------------------------------------------------


def test_resolve_argv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    tool = venv / "bin" / "uvicorn"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert resolve_argv("python -m app 'a b'", venv) == [
        str(venv / "bin/python"),
        "-m",
        "app",
        "a b",
    ]
    assert resolve_argv("python3 w.py", None) == [sys.executable, "w.py"]
    assert resolve_argv("uvicorn app:main", venv) == [str(tool), "app:main"]
    assert resolve_argv("./run.sh x", venv) == ["./run.sh", "x"]
    assert resolve_argv("sh -c true", None)[0].endswith("/sh")
    with pytest.raises(StartupCommandError, match="empty"):
        resolve_argv("  ", venv)
    with pytest.raises(StartupCommandError, match="'no-such-tool' was not found"):
        resolve_argv("no-such-tool", venv, search_path=str(tmp_path))
    with pytest.raises(StartupCommandError, match="cannot be parsed"):
        resolve_argv("python 'unterminated", venv)


def test_build_child_env_is_explicit(tmp_path):
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "LC_ALL": "C.UTF-8",
        "RUNDOWN_API_KEY": "agent-secret",
        "REDIS_PASSWORD": "pw",
        "PYTHONPATH": "/agent",
    }
    venv = tmp_path / "venv"
    env = build_child_env(
        {"MODEL": "small", "WORKERS": 2}, {"DB_PASSWORD": "s3cret"}, venv, base_env=base
    )
    assert env["PATH"] == f"{venv / 'bin'}:/usr/bin"
    assert env["VIRTUAL_ENV"] == str(venv)
    assert (env["HOME"], env["LC_ALL"], env["MODEL"], env["WORKERS"]) == (
        "/home/w",
        "C.UTF-8",
        "small",
        "2",
    )
    assert env["DB_PASSWORD"] == "s3cret" and env["PYTHONUNBUFFERED"] == "1"
    assert "RUNDOWN_API_KEY" not in env and "REDIS_PASSWORD" not in env
    sdk_dir = Path(env["PYTHONPATH"])  # only the copy of task_sdk, not the agent's packages
    assert sorted(p.name for p in sdk_dir.iterdir()) == ["task_sdk"]
    assert (sdk_dir / "task_sdk" / "__init__.py").is_file()
    spec = ChildSpec(argv=["python"], cwd=tmp_path, env=env)
    assert "s3cret" not in repr(spec)
    own = build_child_env({"PYTHONPATH": "/code/src"}, {}, None, base_env=base)
    assert own["PYTHONPATH"] == f"/code/src:{sdk_dir}"


def test_child_spec_validation():
    with pytest.raises(ValueError, match="threads and async_limit must be >= 1"):
        make_spec(threads=0)
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        make_spec(prefetch=-1)
    spec = make_spec(async_limit=7, threads=3)
    env = spec.process_env()
    assert (env["RUNDOWN_PROTOCOL"], env["RUNDOWN_ASYNC_LIMIT"], env["RUNDOWN_SYNC_THREADS"]) == (
        "1",
        "7",
        "3",
    )


# -- protocol units ----------------------------------------------------------------------------


def test_request_encoding_embeds_json_and_base64s_the_rest():
    as_json = encode_request(TaskRequest("t1", "a:b", b'{\n "k": [1, 2]\n}', "q", 1, 3, 10.5, 5.0))
    assert as_json.endswith(b"\n") and as_json.count(b"\n") == 1
    assert json.loads(as_json) == {
        "task_id": "t1",
        "type": "a:b",
        "queue": "q",
        "retry_count": 1,
        "max_retry": 3,
        "deadline": 10.5,
        "timeout": 5.0,
        "payload": {"k": [1, 2]},
    }
    for raw in (b"\xff\x00", b"NaN", b"", b"{bad"):
        message = json.loads(encode_request(TaskRequest("t", "x", raw)))
        assert message["payload"] is None and "payload_b64" in message


def test_line_splitter_limits_without_losing_sync():
    splitter = LineSplitter(2048)
    lines = splitter.feed(b"a\r\nb" + b"x" * 5000)
    lines += splitter.feed(b"y" * 5000 + b"\nc\n")
    lines += splitter.feed(b"tail")
    lines += splitter.finish()
    assert lines[0] == b"a"
    assert isinstance(lines[1], OversizedLine) and lines[1].size == 10001
    assert lines[2:] == [b"c", b"tail"]


def test_parse_line_classifies_everything():
    assert parse_line(b'{"status":"ready"}') == [Ready()]
    ready = parse_line(b'{"status":"ready","protocol":1,"task_types":["*"],"max_in_flight":4}')
    assert ready == [Ready(protocol=1, task_types=("*",), max_in_flight=4)]
    assert parse_line(b"  ") == []
    assert parse_line(b"hello") == [Output("hello")]
    (response,) = parse_line(b'{"task_id":"t","error":"boom","retry":true,"retry_in":3}')
    assert outcome_from_response(response) == Outcome("retry", error="boom", retry_in=3.0)
    (empty_error,) = parse_line(b'{"task_id":"t","result":1,"error":"","retry":true}')
    assert outcome_from_response(empty_error) == Outcome("success", result=b"1")
    (no_result,) = parse_line(b'{"task_id":"t"}')
    assert outcome_from_response(no_result) == Outcome("success", result=None)
    (object_error,) = parse_line(b'{"task_id":"t","error":{"code":7}}')
    assert outcome_from_response(object_error) == Outcome("archive", error='{"code":7}')
    # NaN makes it a line for the standard library's parser, which keeps the huge integer
    (huge_error,) = parse_line(b'{"task_id":"t","error":{"n":' + str(2**70).encode() + b',"x":NaN}}')
    assert outcome_from_response(huge_error) == Outcome("archive", error=f'{{"n": {2**70}, "x": NaN}}')
    prefix, salvaged = parse_line(b'progress{"task_id": "t", "result": 2}')
    assert prefix == Output("progress") and isinstance(salvaged, Response)


async def test_quick_slow_and_hung_handlers_side_by_side(pools):
    """A 10 ms, a 3 s and a hung handler in one pool of 3 children with prefetch: the hung
    task alone fails, on time; the others complete, none charged for its neighbours."""
    pool = await pools(make_spec(prefetch=2), processes=3)
    started = time.monotonic()
    hung = asyncio.create_task(pool.run(request("hang_sync", timeout=1.0)))
    slow = asyncio.create_task(pool.run(request("sleep_sync", {"seconds": 3}, timeout=10)))
    quick = [asyncio.create_task(pool.run(request("sleep_sync", {"seconds": 0.01}, timeout=2)))
             for _ in range(300)]
    outcome = await hung
    assert outcome.kind == "retry" and outcome.error.startswith(
        "context deadline exceeded: task exceeded its deadline of 1s (its timeout; child process ")
    assert time.monotonic() - started < 1.0 + 1.0
    quick_outcomes = await asyncio.gather(*quick)
    kinds = Counter(o.kind for o in quick_outcomes)
    # the quick tasks that waited in the hung child went back uncharged; the rest completed
    assert set(kinds) <= {"success", "requeue"} and kinds["requeue"] <= 2, kinds
    assert (await slow).kind == "success"
    assert pool.running() == 0


async def test_inline_child_hang_after_quick_tasks_blames_only_the_hang(pools):
    """Quick tasks answered just before a hang in a sync-only (inline) child: their answers
    must not wait behind the hang, or the agent would think one of them still ran and kill
    the child for its timeout."""
    pool = await pools(make_spec("sync_app.py", prefetch=10))
    before = [request("quick", {"n": n}, timeout=1.0) for n in range(5)]
    hang = request("hang", timeout=1.5)
    after = [request("quick", {"n": n}, timeout=1.0) for n in range(3)]
    running = [asyncio.create_task(pool.run(r)) for r in (*before, hang, *after)]
    outcomes = await asyncio.gather(*running)
    assert [o.kind for o in outcomes[:5]] == ["success"] * 5
    assert outcomes[5].kind == "retry"
    assert outcomes[5].error.startswith(
        "context deadline exceeded: task exceeded its deadline of 1.5s (its timeout; child process ")
    assert [o.kind for o in outcomes[6:]] == ["requeue"] * 3  # waited behind it: uncharged
