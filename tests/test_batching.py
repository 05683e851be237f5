"""Batched handlers with real children: one batch per slot, per-task outcomes, crash bisection.

The children are tests/children/batch_app.py run with the current interpreter.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from agent.supervisor import (
    Capacity,
    ChildSpec,
    Outcome,
    RestartPolicy,
    TaskRequest,
    build_child_env,
)
from agent.supervisor.long_running import LongRunningPool

CHILDREN = Path(__file__).parent / "children"
FAST_RESTART = RestartPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.1)


def spec(env: dict[str, str] | None = None, **overrides) -> ChildSpec:
    settings = {"startup_timeout": 10.0, "queue": "test", "stop_grace": 1.0, "deadline_grace": 0.3}
    settings.update(overrides)
    return ChildSpec(argv=[sys.executable, str(CHILDREN / "batch_app.py")], cwd=CHILDREN,
                     env=build_child_env(env or {}, {}, None), **settings)


def req(task_type: str, payload, *, timeout: float | None = None) -> TaskRequest:
    return TaskRequest(task_id=uuid.uuid4().hex, type=task_type, payload=json.dumps(payload).encode(),
                       queue="test", deadline=time.time() + 60, timeout=timeout)


@pytest.fixture
async def pool_of():
    made: list[LongRunningPool] = []

    async def make(processes: int = 1, concurrency: int = 1, **kw) -> LongRunningPool:
        pool = LongRunningPool(spec(**kw), processes, FAST_RESTART, capacity=Capacity(concurrency))
        made.append(pool)
        await pool.start()
        return pool

    yield make
    await asyncio.gather(*(p.stop(grace=1.0) for p in made))


def submit_all(pool: LongRunningPool, requests: list[TaskRequest]) -> list[asyncio.Future[Outcome]]:
    loop = asyncio.get_running_loop()
    futures = []
    for request in requests:
        future: asyncio.Future[Outcome] = loop.create_future()
        assert pool.try_submit(request, lambda o, f=future: f.done() or f.set_result(o))
        futures.append(future)
    return futures


async def test_a_batch_of_32_with_one_failing_item(pool_of):
    pool = await pool_of()
    assert pool.placeable(1) == 32  # one free slot takes a whole batch
    # max_wait 5 s: sent when full, though a loaded machine may take > 10 ms to submit the 32
    requests = [req("embed_full", {"n": i, "fail": i == 5}) for i in range(32)]
    outcomes = await asyncio.wait_for(asyncio.gather(*submit_all(pool, requests)), 10)
    good = [o for o in outcomes if o.kind == "success"]
    assert len(good) == 31
    assert [json.loads(o.result)["n"] for o in good] == [i for i in range(32) if i != 5]
    assert all(json.loads(o.result)["size"] == 32 for o in good)  # one batch of 32
    assert outcomes[5] == Outcome("retry", error="item 5 is bad")
    assert pool.capacity.running == 0 and pool.batches.held == 0


async def test_item_exceptions_and_a_raising_handler(pool_of):
    pool = await pool_of()
    outcomes = await asyncio.gather(*submit_all(pool, [
        req("embed", {"n": 0, "skip": True}), req("embed", {"n": 1})]))
    assert outcomes[0] == Outcome("archive", error="item 0 skipped")
    assert outcomes[1].kind == "success"
    outcomes = await asyncio.gather(*submit_all(pool, [
        req("embed", {"n": 0}), req("embed", {"n": 1, "raise": True})]))
    assert [o.kind for o in outcomes] == ["retry", "retry"]
    assert all(o.error == "ValueError: the whole batch failed" for o in outcomes)
    wrong = await asyncio.gather(*submit_all(pool, [req("wrong", {"n": i}) for i in range(3)]))
    assert all(o.kind == "retry" and o.error.startswith("BatchResultMismatch: ")
               and "return one result per payload" in o.error
               for o in wrong)


async def test_max_wait_sends_a_partial_batch(pool_of):
    pool = await pool_of()
    started = time.monotonic()
    outcomes = await asyncio.gather(*submit_all(pool, [req("embed_wait", {"n": i}) for i in range(3)]))
    assert [json.loads(o.result)["size"] for o in outcomes] == [3, 3, 3]
    # sent at max_wait (its timer is set up to 2 ms early), not held for a full batch
    assert 0.3 - 0.002 <= time.monotonic() - started < 5


async def test_async_batched_handler(pool_of):
    pool = await pool_of(env={"RUNDOWN_ASYNC_LIMIT": "4"})
    requests = [req("aembed", {"n": i, "fail": i == 3}) for i in range(20)]
    outcomes = await asyncio.gather(*submit_all(pool, requests))
    sizes = [json.loads(o.result)["size"] for o in outcomes if o.kind == "success"]
    assert len(sizes) == 19 and max(sizes) <= 8
    assert outcomes[3] == Outcome("retry", error="item 3 is bad")


async def test_a_batch_holds_one_slot_and_concurrency_counts_it_once(pool_of):
    pool = await pool_of(processes=2, concurrency=1)
    futures = submit_all(pool, [req("slow", {"n": i, "sleep": 0.5}) for i in range(8)])
    await asyncio.sleep(0.2)
    assert pool.capacity.running == 1  # one handler (max_wait 0: the first task alone)
    assert pool.running() == 1 and pool.batches.held == 7  # the rest waits, in batches of 4
    outcomes = await asyncio.gather(*futures)
    assert all(o.kind == "success" for o in outcomes)


async def test_timeout_counts_from_the_batch_start_and_charges_each_late_task(pool_of):
    pool = await pool_of()
    late = [req("slow", {"n": i, "sleep": 5}, timeout=0.5) for i in range(3)]
    roomy = req("slow", {"n": 9, "sleep": 5}, timeout=30)
    outcomes = await asyncio.wait_for(asyncio.gather(*submit_all(pool, [*late, roomy])), 10)
    assert [o.kind for o in outcomes] == ["retry", "retry", "retry", "requeue"]
    assert all(o.error.startswith("context deadline exceeded") for o in outcomes[:3])
    ok = await asyncio.gather(*submit_all(pool, [req("embed", {"n": 1})]))  # a new child serves
    assert ok[0].kind == "success"


async def test_crash_mid_batch_is_bisected_until_only_the_culprit_is_charged(pool_of, tmp_path):
    log = tmp_path / "batches.log"
    pool = await pool_of(env={"BATCH_LOG": str(log)})
    requests = [req("embed", {"n": i, "crash": i == 11}) for i in range(32)]
    outcomes = await asyncio.wait_for(asyncio.gather(*submit_all(pool, requests)), 60)
    assert [i for i, o in enumerate(outcomes) if o.kind != "success"] == [11]
    assert outcomes[11].kind == "retry"
    assert "exited with code 7 while running this task" in outcomes[11].error
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    crashed = [r for r in runs if 11 in r]
    assert [len(r) for r in crashed] == [32, 16, 8, 4, 2, 1]  # halved on each crash
    assert len(crashed) <= math.log2(32) + 1
    assert sorted(n for r in runs if 11 not in r for n in r) == [i for i in range(32) if i != 11]
    assert pool.crashes.healthy  # halves served between the crashes: no crash loop


async def test_two_culprits_in_one_batch_are_both_found(pool_of):
    pool = await pool_of()
    requests = [req("embed", {"n": i, "crash": i in (2, 13)}) for i in range(16)]
    outcomes = await asyncio.wait_for(asyncio.gather(*submit_all(pool, requests)), 60)
    assert [i for i, o in enumerate(outcomes) if o.kind != "success"] == [2, 13]


async def test_stop_requeues_the_tasks_of_a_forming_batch(pool_of):
    pool = await pool_of()
    futures = submit_all(pool, [req("slow", {"n": i, "sleep": 1.0}) for i in range(6)])
    await asyncio.sleep(0.3)  # the first runs alone (max_wait 0); 5 wait for its slot
    await pool.drain(5.0)
    outcomes = await asyncio.gather(*futures)
    assert [o.kind for o in outcomes] == ["success"] + ["requeue"] * 5


async def test_withdrawn_task_leaves_its_batch(pool_of):
    pool = await pool_of()
    futures = submit_all(pool, [req("slow", {"n": 0, "sleep": 0.3})])
    await asyncio.sleep(0.05)
    waiting = req("slow", {"n": 1})
    loop_future = submit_all(pool, [waiting])[0]
    assert pool.withdraw(waiting.task_id)
    assert (await futures[0]).kind == "success"
    await asyncio.sleep(0.1)
    assert not loop_future.done() and pool.batches.held == 0


async def test_unbatched_types_of_the_same_code_still_run_alone(pool_of):
    pool = await pool_of()
    outcome = await pool.run(req("single", {"x": 1}))
    assert outcome == Outcome("success", result=b'{"single":{"x":1}}')
    batched = await pool.run(req("embed", {"n": 4}))
    assert json.loads(batched.result) == {"n": 4, "size": 1, "model": "tiny"}


# -- end to end: a real agent, real Redis ------------------------------------------------------


def test_agent_runs_32_tasks_as_one_batch_and_charges_only_the_failing_and_the_crashing(
        tmp_path, redis_url):
    from agent.client import Client
    from tests.agentproc import AgentProcess, local_config, wait_until

    with Client(redis_url) as client:
        infos = [client.enqueue("embed_full", {"n": i, "fail": i == 5}, queue="batched",
                                retention=600, max_retry=3) for i in range(32)]
        config, port = local_config(tmp_path, redis_url, ["batched"], concurrency=1,
                                    startup_cmd="python batch_app.py", app_dir=CHILDREN)
        agent = AgentProcess(config, port, tmp_path / "agent.log").start()
        try:
            def states():
                found = [client.get_task("batched", i.id) for i in infos]
                return found if sum(f.state in ("completed", "retry") for f in found) == 32 else None

            found = wait_until(states, 30, what="32 tasks done")
            done = [f for f in found if f.state == "completed"]
            assert len(done) == 31
            assert {f.result_json()["size"] for f in done} == {32}  # one batch of 32
            assert found[5].state == "retry" and found[5].retried == 1
            assert found[5].last_error == "item 5 is bad"

            crash = [client.enqueue("embed", {"n": i, "crash": i == 6}, queue="batched",
                                    retention=600, max_retry=3) for i in range(16)]

            def crashed():
                found = [client.get_task("batched", i.id) for i in crash]
                return found if sum(f.state in ("completed", "retry") for f in found) == 16 else None

            found = wait_until(crashed, 60, what="16 tasks done after the crashes")
            assert [f.state for f in found] == ["completed"] * 6 + ["retry"] + ["completed"] * 9
            assert "exited with code 7 while running this task" in found[6].last_error
            assert found[6].retried == 1
            assert agent.get("/readyz").status_code == 200
        finally:
            agent.stop()


def test_the_inference_example_serves_batches_from_a_model_loaded_once(tmp_path, redis_url):
    from agent.client import Client
    from tests.agentproc import AgentProcess, local_config, wait_until

    example = Path(__file__).parent.parent / "agent" / "examples" / "tasks"
    with Client(redis_url) as client:
        texts = [f"the quick brown fox {i % 8}" for i in range(64)]
        infos = [client.enqueue("embed", {"text": t}, queue="inference", retention=600) for t in texts]
        bad = client.enqueue("embed", {"txt": "typo"}, queue="inference", retention=600)
        config, port = local_config(tmp_path, redis_url, ["inference"], concurrency=2, processes=2,
                                    startup_cmd="python inference.py", app_dir=example)
        agent = AgentProcess(config, port, tmp_path / "agent.log").start()
        try:
            def finished():
                found = [client.get_task("inference", i.id) for i in [*infos, bad]]
                return found if all(f.state in ("completed", "archived") for f in found) else None

            found = wait_until(finished, 30, what="65 embed tasks done")
        finally:
            agent.stop()
    *good, rejected = found
    assert rejected.state == "archived" and rejected.last_error == 'payload needs a non-empty "text"'
    results = [f.result_json() for f in good]
    assert all(len(r["vector"]) == 16 for r in results)
    assert all(abs(sum(v * v for v in r["vector"]) - 1) < 1e-3 for r in results)
    by_text: dict[str, set] = {}
    for text, result in zip(texts, results, strict=True):
        by_text.setdefault(text, set()).add(tuple(result["vector"]))
    assert all(len(vectors) == 1 for vectors in by_text.values())  # same model in every child
    assert max(r["batch"] for r in results) > 1  # served in batches


@pytest.mark.parametrize("mode", ["one_shot", "threads"])
async def test_a_batched_type_sent_alone_runs_as_a_batch_of_one(mode):
    from agent.supervisor import create_pool

    env = {"RUNDOWN_SYNC_THREADS": "2"} if mode == "threads" else {}
    pool = create_pool(spec(env), mode="one_shot" if mode == "one_shot" else "long_running",
                       restart=FAST_RESTART)
    await pool.start()
    try:
        request = req("embed", {"n": 3})
        if mode == "threads":  # the asyncio server; sent as a plain request, as an older agent would
            pool.batches.specs.clear()
        outcome = await pool.run(request)
        assert json.loads(outcome.result) == {"n": 3, "size": 1, "model": "tiny"}
        failing = await pool.run(req("embed", {"n": 4, "fail": True}))
        assert failing == Outcome("retry", error="item 4 is bad")
    finally:
        await pool.stop(grace=1.0)


def test_agent_killed_mid_batch_loses_no_task(tmp_path, redis_url):
    """Every task of a batch holds its own lease: a second agent runs them all again once the
    killed agent's leases expire; the killed agent's child dies with it."""
    import psutil

    from agent.broker import keys
    from agent.client import Client
    from tests.agentproc import AgentProcess, local_config, wait_until

    marker = tmp_path / "hanging"
    with Client(redis_url) as client:
        infos = [client.enqueue("embed", {"n": i}, queue="batched", retention=600) for i in range(8)]
        config, port = local_config(tmp_path, redis_url, ["batched"], concurrency=1,
                                    startup_cmd="python batch_app.py", app_dir=CHILDREN,
                                    extra_env={"HANG_ONCE": str(marker)})
        first = AgentProcess(config, port, tmp_path / "first.log").start()
        wait_until(marker.exists, 20, what="the batch running")
        r = redis.Redis.from_url(redis_url)
        assert r.llen(keys.active("batched")) == 8 and r.zcard(keys.lease("batched")) == 8
        first.kill()  # SIGKILL
        child = int(marker.read_text())
        wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie",
                   10, what="the batch's child gone with its agent")
        config, port = local_config(tmp_path, redis_url, ["batched"], concurrency=1,
                                    startup_cmd="python batch_app.py", app_dir=CHILDREN,
                                    extra_env={"HANG_ONCE": str(marker)})
        second = AgentProcess(config, port, tmp_path / "second.log").start()
        try:
            def completed():
                found = [client.get_task("batched", i.id) for i in infos]
                return found if all(f.state == "completed" for f in found) else None

            found = wait_until(completed, 40, what="the 8 tasks run again by the second agent")
        finally:
            second.stop()
        assert sorted(f.result_json()["n"] for f in found) == list(range(8))
        assert r.zcard(keys.completed("batched")) == 8 and not r.llen(keys.active("batched"))
        r.close()


async def test_a_batch_waiting_on_another_pools_handlers_starts_when_they_end(pool_of):
    """worker.concurrency is shared by the pools: a batch held back by another pool's handler
    starts once that handler ends, though nothing of its own pool finished."""
    capacity = Capacity(1)
    other = LongRunningPool(spec(queue="other"), 1, FAST_RESTART, capacity=capacity)
    pool = LongRunningPool(spec(), 1, FAST_RESTART, capacity=capacity)
    await asyncio.gather(other.start(), pool.start())
    try:
        busy = submit_all(other, [req("slow", {"n": 0, "sleep": 1.0})])
        await asyncio.sleep(0.1)
        assert capacity.room == 0
        waiting = submit_all(pool, [req("embed", {"n": i}) for i in range(3)])
        await asyncio.sleep(0.1)
        assert pool.batches.held == 3 and not any(f.done() for f in waiting)
        assert (await busy[0]).kind == "success"
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert [json.loads(o.result)["size"] for o in outcomes] == [3, 3, 3]
    finally:
        await asyncio.gather(other.stop(grace=1.0), pool.stop(grace=1.0))


async def test_withdrawing_from_a_full_batch_that_waits_for_a_slot_loses_no_other_task(pool_of):
    pool = await pool_of()
    running = submit_all(pool, [req("slow", {"n": 0, "sleep": 1.0})])  # max_wait 0: alone
    await asyncio.sleep(0.1)
    full = [req("slow", {"n": i}) for i in range(1, 5)]  # a full batch of 4, due
    due = submit_all(pool, full)
    forming = submit_all(pool, [req("slow", {"n": 5})])  # the next one, forming
    assert pool.withdraw(full[0].task_id)  # the due batch is no longer full
    outcomes = await asyncio.wait_for(asyncio.gather(running[0], *due[1:], forming[0]), 10)
    assert [json.loads(o.result)["n"] for o in outcomes] == [0, 2, 3, 4, 5]
    assert not due[0].done() and pool.batches.held == 0


async def test_a_batched_pool_leaves_other_pools_their_share_of_concurrency(redis_url, r):
    """Two deployments, one with batched code: the batched pool's free slot takes 32 tasks
    but one handler, so the other pool still gets worker.concurrency's other handler."""
    import redis.asyncio as aioredis

    from agent.broker import Broker, keys
    from agent.runtime.leases import LeaseKeeper
    from agent.runtime.processor import Processor
    from agent.runtime.wakeup import QueueWaiters, WorkSignal
    from agent.supervisor import create_pool
    from tests.test_processor import wait_for

    capacity = Capacity(2)
    batched = LongRunningPool(spec(queue="batched"), 1, FAST_RESTART, capacity=capacity)
    plain_spec = ChildSpec(argv=[sys.executable, str(CHILDREN / "sdk_app.py")], cwd=CHILDREN,
                           env=build_child_env({}, {}, None), startup_timeout=10.0, queue="plain")
    plain = create_pool(plain_spec, capacity=capacity)
    client = aioredis.Redis.from_url(redis_url)
    broker, work = Broker(client), WorkSignal()
    waiters = QueueWaiters(aioredis.Redis.from_url(redis_url), work)
    leases = LeaseKeeper(redis.Redis.from_url(redis_url), interval=0.2)
    pools = {"batched": batched, "plain": plain}
    processor = Processor(broker, {"batched": 1, "plain": 1}, concurrency=2, capacity=capacity,
                          executor_for=pools.__getitem__, leases=leases, signal=work, waiters=waiters)
    await asyncio.gather(batched.start(), plain.start())
    leases.start()
    run = asyncio.create_task(processor.run())
    try:
        from agent.broker.options import EnqueueOptions

        await broker.enqueue_many([("echo", json.dumps({"n": i}).encode(), EnqueueOptions(queue="plain"))
                                   for i in range(10)])
        await wait_for(lambda: r.get(keys.processed_total("plain")) == b"10", timeout=10)
    finally:
        await processor.drain(2.0)
        await run
        await waiters.stop()
        leases.stop()
        await asyncio.gather(batched.stop(grace=1.0), plain.stop(grace=1.0))
        await waiters.client.aclose()
        await broker.close()


# -- cancel of a task waiting for its batch; the batches on /status ---------------------------


async def test_cancel_takes_a_waiting_task_out_of_its_batch(pool_of):
    pool = await pool_of()
    requests = [req("embed_wait", {"n": i}) for i in range(3)]  # max_wait 0.3 s
    futures = submit_all(pool, requests)
    [entry] = pool.batches.status()["embed_wait"]["collecting"]
    assert entry["tasks"] == 3 and not entry["due"]
    await pool.cancel(requests[1].task_id)
    assert futures[1].done()  # at once, before the batch is sent
    assert futures[1].result() == Outcome("retry", error="context canceled")
    outcomes = await asyncio.wait_for(asyncio.gather(futures[0], futures[2]), 5)
    assert [json.loads(o.result) for o in outcomes] == [
        {"n": 0, "size": 2, "model": "tiny"}, {"n": 2, "size": 2, "model": "tiny"}]
    status = pool.batches.status()["embed_wait"]
    assert status["collecting"] == [] and status["batches_sent"] == 1 and status["tasks_sent"] == 2
    assert pool.batches.cancelled == 1 and pool.batches.held == 0


async def test_cancelling_every_task_of_a_full_batch_waiting_for_a_slot_sends_nothing(pool_of):
    """The worst moment: the batch is full (due) and waits for the slot a long handler holds;
    all its tasks are cancelled. Nothing of it is sent, the slot's next batch is the one
    behind it, and a cancel that arrives once a task's batch runs goes to the child."""
    pool = await pool_of()
    running = submit_all(pool, [req("slow", {"n": 0, "sleep": 0.6})])
    await asyncio.sleep(0.1)
    full = [req("slow", {"n": i}) for i in range(1, 5)]
    due = submit_all(pool, full)
    behind = [req("slow", {"n": 5, "sleep": 0.3})]
    after = submit_all(pool, behind)
    slow = pool.batches.status()["slow"]
    assert [b["due"] for b in slow["collecting"]] == [True, False] and slow["waiting_tasks"] == 5
    assert slow["oldest_age_seconds"] >= 0
    for request in full:
        await pool.cancel(request.task_id)
    assert all(f.result() == Outcome("retry", error="context canceled") for f in due)
    assert (await running[0]).kind == "success"
    await asyncio.sleep(0.1)  # the batch behind runs now
    assert pool.handler_started(behind[0].task_id)
    await pool.cancel(behind[0].task_id)  # running: the child is asked (a sync handler finishes)
    assert (await asyncio.wait_for(after[0], 5)).kind == "success"
    await pool.cancel("no-such-task")  # nothing happens
    assert pool.batches.status()["slow"]["tasks_sent"] == 2 and pool.batches.held == 0


def test_agent_cancel_of_a_task_waiting_for_its_batch_and_the_batches_on_status(tmp_path, redis_url):
    """inspect task cancel (asynq's cancel channel) on tasks waiting for their batch (max_wait
    5 s): each fails with "context canceled" as asynq records it (retry, retried + 1; archived
    when out of retries), while the batch runs without them; /status and /metrics show the
    batch while it is collected."""
    from click.testing import CliRunner

    from agent.client import Client
    from agent.inspect.cli import inspect_cli
    from tests.agentproc import AgentProcess, local_config, wait_until

    config, port = local_config(tmp_path, redis_url, ["batched"], concurrency=1,
                                startup_cmd="python batch_app.py", app_dir=CHILDREN)
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        with Client(redis_url) as client:
            infos = [client.enqueue("embed_full", {"n": i}, queue="batched", retention=600,
                                    max_retry=0 if i == 2 else 3) for i in range(4)]

            def collecting():
                batches = agent.get("/status").json()["executors"]["batched"]["batches"]
                return batches if batches["embed_full"]["waiting_tasks"] == 4 else None

            batches = wait_until(collecting, 10, what="4 tasks waiting for their batch")
            assert batches["embed_full"]["batch"] == 32 and batches["embed_full"]["max_wait"] == 5.0
            [entry] = batches["embed_full"]["collecting"]
            assert entry["tasks"] == 4 and 0 <= entry["age_seconds"] < 5
            metrics = agent.get("/metrics").text
            assert 'rundown_batch_waiting_tasks{queue="batched",type="embed_full"} 4.0' in metrics
            result = CliRunner().invoke(inspect_cli, ["--redis", redis_url, "task", "cancel",
                                                      infos[1].id, infos[2].id])
            assert result.exit_code == 0, result.output
            wait_until(lambda: all(client.get_task("batched", infos[i].id).state != "active"
                                   for i in (1, 2)), 3, what="the cancels written")
            assert client.get_task("batched", infos[0].id).state == "active"  # its batch waits on

            def finished():
                found = [client.get_task("batched", i.id) for i in infos]
                return found if all(t.state != "active" for t in found) else None

            done = wait_until(finished, 20, what="the batch run")
        by_id = {t.id: t for t in done}
        one, two = by_id[infos[1].id], by_id[infos[2].id]
        assert one.state == "retry" and one.retried == 1 and one.last_error == "context canceled"
        assert two.state == "archived" and two.last_error == "context canceled"
        for i in (0, 3):
            task = by_id[infos[i].id]
            assert task.state == "completed" and task.result_json()["size"] == 2
        status = agent.get("/status").json()["executors"]["batched"]["batches"]["embed_full"]
        assert status["collecting"] == [] and status["tasks_sent"] == 2
        assert 'rundown_batches_sent_total{queue="batched",type="embed_full"} 1.0' in agent.get("/metrics").text
    finally:
        agent.stop()


async def test_a_forming_batchs_timer_is_set_to_leave_by_max_wait(pool_of):
    """asyncio's timers fire up to 2 ms late (whole milliseconds, rounded up): the collector
    sets a forming batch's timer early by at most a fifth of max_wait, never after it."""
    from agent.supervisor.batches import TIMER_SLACK

    pool = await pool_of()
    request = req("embed_wait", {"n": 0})  # max_wait 0.3 s
    future = submit_all(pool, [request])[0]
    [batch] = pool.batches._forming.values()
    when = pool.batches._timer.when()
    assert batch.opened + 0.3 - TIMER_SLACK - 0.0005 <= when <= batch.opened + 0.3 - TIMER_SLACK + 0.0005
    assert json.loads((await asyncio.wait_for(future, 5)).result)["size"] == 1
