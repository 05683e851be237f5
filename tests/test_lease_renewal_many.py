"""renew_leases.lua over many tasks at once: one ZMSCORE and one ZADD per chunk of 1,000,
with every per-task rule of the one-task path (tests/test_recovery.py) kept."""

from __future__ import annotations

from agent.broker import keys
from agent.broker.plans import FENCED_LEASE_FIELD, LEASE_FENCE_GRACE
from agent.broker.scripts import source

Q = "renewals"


def test_renewing_2500_leases_in_one_call_keeps_each_tasks_rule(r):
    now = int(r.time()[0])
    lease = keys.lease(Q)
    expiry = now + 10
    kinds = ("ours", "ours_late", "not_ours", "no_lease", "ours_no_hash", "ours_ahead")
    tasks = [(f"id{i}", kinds[i % len(kinds)]) for i in range(2_500)]
    args: list = [expiry, LEASE_FENCE_GRACE, keys.task_prefix(Q)]
    pipe = r.pipeline(transaction=False)
    for task_id, kind in tasks:
        score = {"ours": now + 3, "ours_late": now - LEASE_FENCE_GRACE - 5, "not_ours": now + 40,
                 "ours_no_hash": now + 3, "ours_ahead": now + 30}.get(kind)
        if score is not None:
            pipe.zadd(lease, {task_id: score})
        if kind != "ours_no_hash":
            pipe.hset(keys.task_key(Q, task_id), mapping={"state": "active", FENCED_LEASE_FIELD: score or 0})
        mine = score if kind != "not_ours" else now + 3  # the holder believes its own score
        args += [task_id, 2, mine if mine is not None else now + 3, 1]
    pipe.execute()
    replies = r.register_script(source("renew_leases"))(keys=[lease], args=args)
    assert len(replies) == len(tasks)
    for (task_id, kind), reply in zip(tasks, replies, strict=True):
        score = r.zscore(lease, task_id)
        marker = r.hget(keys.task_key(Q, task_id), FENCED_LEASE_FIELD)
        if kind in ("ours", "ours_no_hash"):
            assert reply == expiry and score == expiry, (task_id, kind)
        elif kind == "ours_ahead":  # never lowered
            assert reply == now + 30 and score == now + 30
        else:
            assert reply is None, (task_id, kind)
        if kind in ("ours", "ours_ahead"):
            assert int(marker) == reply
        elif kind == "ours_no_hash":  # no stub hash created
            assert not r.exists(keys.task_key(Q, task_id))
        elif kind == "not_ours":
            assert score == now + 40 and int(marker) == now + 40  # left to its holder
        elif kind == "ours_late":
            assert score == now - LEASE_FENCE_GRACE - 5
        else:
            assert score is None


def test_renewal_when_every_hash_exists_writes_every_marker(r):
    now = int(r.time()[0])
    lease, expiry = keys.lease(Q), now + 10
    ids = [f"all{i}" for i in range(300)]
    r.zadd(lease, dict.fromkeys(ids, now + 3))
    for task_id in ids:
        r.hset(keys.task_key(Q, task_id), mapping={"state": "active", FENCED_LEASE_FIELD: now + 3})
    args: list = [expiry, LEASE_FENCE_GRACE, keys.task_prefix(Q)]
    for task_id in ids:
        args += [task_id, 1, now + 3]
    assert r.register_script(source("renew_leases"))(keys=[lease], args=args) == [expiry] * len(ids)
    for task_id in ids:
        assert r.zscore(lease, task_id) == expiry
        assert int(r.hget(keys.task_key(Q, task_id), FENCED_LEASE_FIELD)) == expiry
