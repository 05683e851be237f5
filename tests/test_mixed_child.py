"""A child with sync and async handlers keeps the inline fast path (issue 20, item 1): with one
handler thread it runs one handler at a time, async ones on a loop kept for its life, and
still honours deadlines and cancels of async handlers (tests/test_supervisor.py runs its whole
suite on such a child too: tests/children/sdk_app.py mixes both kinds)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.supervisor import ChildSpec, Outcome, TaskRequest, build_child_env, create_pool

CHILDREN = Path(__file__).parent / "children"


def spec(**overrides) -> ChildSpec:
    settings = {"startup_timeout": 10.0, "queue": "mixed", "stop_grace": 1.0, "deadline_grace": 0.3}
    settings.update(overrides)
    return ChildSpec(argv=[sys.executable, str(CHILDREN / "mixed_app.py")], cwd=CHILDREN,
                     env=build_child_env({}, {}, None), **settings)


def request(task_type: str, payload=None, *, timeout: float | None = None) -> TaskRequest:
    return TaskRequest(task_id=uuid.uuid4().hex, type=task_type, payload=json.dumps(payload or {}).encode(),
                       retry_count=0, max_retry=3, queue="mixed", deadline=time.time() + 30, timeout=timeout)


@pytest.fixture
async def pool():
    made = create_pool(spec(prefetch=4), mode="long_running", processes=1)
    await made.start()
    yield made
    await made.stop(1.0)


def result(outcome: Outcome) -> dict:
    assert outcome.kind == "success", outcome
    return json.loads(outcome.result)


async def test_sync_and_async_handlers_run_inline_on_the_main_thread(pool):
    sync = result(await pool.run(request("where")))
    assert sync == {"thread": "MainThread", "handler_threads": []}  # no handler thread pool
    first = result(await pool.run(request("where_async")))
    second = result(await pool.run(request("where_async")))
    assert first["thread"] == second["thread"] == "MainThread"
    assert first["loop"] == second["loop"]  # one event loop for the child's life
    assert result(await pool.run(request("where"))) == {"thread": "MainThread", "handler_threads": []}


async def test_requests_arriving_during_an_async_handler_run_after_it_in_order(pool):
    tasks = [request("where_async", {"sleep": 0.3})] + [request("where_async") for _ in range(3)]
    outcomes = await asyncio.gather(*(pool.run(t) for t in tasks))
    ends = [result(o)["ended"] for o in outcomes]
    assert [result(o)["id"] for o in outcomes] == [t.task_id for t in tasks]
    assert ends == sorted(ends)  # one at a time, in arrival order


async def test_cancel_of_a_running_async_handler_and_the_waiting_tasks_still_run(pool):
    hanging = request("where_async", {"sleep": 30})
    waiting = request("where")
    running = asyncio.create_task(pool.run(hanging))
    queued = asyncio.create_task(pool.run(waiting))
    await asyncio.sleep(0.3)
    await pool.cancel(hanging.task_id)
    assert await asyncio.wait_for(running, 5) == Outcome("retry", error="cancelled: the agent cancelled this task")
    assert result(await asyncio.wait_for(queued, 5))["thread"] == "MainThread"


async def test_async_handler_past_its_deadline_is_cancelled_by_the_sdk(pool):
    (before,) = [c["pid"] for c in pool.status()]
    outcome = await pool.run(request("where_async", {"sleep": 30}, timeout=0.4))
    assert outcome == Outcome("retry", error="context deadline exceeded: task exceeded its deadline of "
                              "0.4s (its async handler was cancelled)")
    assert result(await pool.run(request("where")))["thread"] == "MainThread"
    assert [c["pid"] for c in pool.status()] == [before]  # answered by the SDK: same child


async def test_an_async_handler_that_never_waits_runs_in_its_task_and_leaves_nothing_behind(pool):
    """Its first (and only) step is run by the SDK, not by a turn of the loop: it still runs in
    an asyncio task (current_task, asyncio.timeout), context variables it sets do not leak into
    the next task, its exception is its own failure, and many of them, alternating with ones
    that wait, leave no timers or callbacks on the loop."""
    first = result(await pool.run(request("inside_async", {"mark": "a"})))
    assert first == {"task": True, "seen_before": None, "timers": 0, "ready": 0}
    assert result(await pool.run(request("inside_async")))["timers"] == 1  # the first's, cancelled
    failed = await pool.run(request("inside_async", {"fail": "x1"}))
    assert failed.kind == "retry" and "failed as asked: x1" in failed.error, failed
    waited = result(await pool.run(request("inside_async", {"mark": "b", "wait": True})))
    assert waited["task"] is True and waited["seen_before"] is None
    outcomes = await asyncio.gather(*(
        pool.run(request("inside_async", {"mark": i, "wait": i % 50 == 0, "fail": i if i % 7 == 1 else None}))
        for i in range(1_000)))
    for i, outcome in enumerate(outcomes):
        if i % 7 == 1:
            assert outcome.kind == "retry" and f"failed as asked: {i}" in outcome.error, (i, outcome)
        else:
            assert result(outcome)["seen_before"] is None and result(outcome)["task"] is True, (i, outcome)
    last = result(await pool.run(request("inside_async")))
    # each handler's own asyncio.timeout left a cancelled timer that no loop turn removed:
    # the SDK sweeps them as a turn would (more than 100, and more than half cancelled)
    assert last["timers"] <= 101 and last["ready"] == 0, last


async def test_an_async_handler_that_waits_past_its_deadline_after_a_fast_first_step(pool):
    """Adversarial: the deadline's timer is set only once the handler waits; it must still
    cancel it (a handler that ran its first step past the deadline is cancelled at its wait)."""
    outcome = await pool.run(request("where_async", {"sleep": 30}, timeout=0.3))
    assert outcome.kind == "retry" and "deadline" in outcome.error, outcome
    late = request("inside_async", {"wait": True})
    late.deadline = time.time() - 1  # already past: cancelled at its first wait
    outcome = await pool.run(late)
    assert outcome.kind == "retry" and "deadline" in outcome.error, outcome
    assert result(await pool.run(request("inside_async")))["timers"] <= 101
