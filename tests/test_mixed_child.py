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
