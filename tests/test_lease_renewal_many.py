"""renew_leases.lua over many tasks at once: one ZMSCORE and one ZADD per chunk of 1,000,
with every per-task rule of the one-task path (tests/test_recovery.py) kept; and the fence
marker written once per task (its first renewal), a renewal record per holder and queue after
that, which the recoverer reads."""

from __future__ import annotations

import redis

from agent.broker import keys
from agent.broker.plans import FENCED_LEASE_FIELD, LEASE_FENCE_GRACE
from agent.broker.scripts import source
from agent.runtime.leases import RENEWAL_RECORD_SECONDS

Q = "renewals"
H = "holder1"


def renew(r: redis.Redis, expiry: int, tasks: list[tuple[str, int, list[int]]], holder: str = H,
          queue: str = Q) -> list:
    """One renew_leases.lua call; tasks are (id, marked, candidate scores)."""
    args: list = [expiry, LEASE_FENCE_GRACE, keys.task_prefix(queue), holder, RENEWAL_RECORD_SECONDS]
    for task_id, marked, candidates in tasks:
        args += [task_id, marked, len(candidates), *candidates]
    return r.register_script(source("renew_leases"))(
        keys=[keys.lease(queue), keys.lease_renewal(queue, holder)], args=args)


def fenced_now(r: redis.Redis, queue: str = Q) -> dict[str, bool]:
    """How the recoverer reads every lease of the queue (whatever its time): id -> fenced.
    A fenced skew of -10**6 lists every fenced lease; asynq's rule would list a lease only
    10**6 s after it expired, so the others show as not fenced here."""
    listed = r.register_script(source("list_lease_expired"))(
        keys=[keys.lease(queue)], args=[-10**6, 10**6, 100_000])
    seen = {listed[i + 1].decode(): listed[i + 3] == 1 for i in range(0, len(listed), 5)}
    return {m.decode(): seen.get(m.decode(), False) for m in r.zrange(keys.lease(queue), 0, -1)}


def hset_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_hset", {}).get("calls", 0))


def test_renewing_2500_leases_in_one_call_keeps_each_tasks_rule(r):
    now = int(r.time()[0])
    lease = keys.lease(Q)
    expiry = now + 10
    kinds = ("ours", "ours_late", "not_ours", "no_lease", "ours_no_hash", "ours_ahead")
    tasks = [(f"id{i}", kinds[i % len(kinds)]) for i in range(2_500)]
    calls = []
    pipe = r.pipeline(transaction=False)
    for task_id, kind in tasks:
        score = {"ours": now + 3, "ours_late": now - LEASE_FENCE_GRACE - 5, "not_ours": now + 40,
                 "ours_no_hash": now + 3, "ours_ahead": now + 30}.get(kind)
        if score is not None:
            pipe.zadd(lease, {task_id: score})
        if kind != "ours_no_hash":
            pipe.hset(keys.task_key(Q, task_id), mapping={"state": "active", FENCED_LEASE_FIELD: score or 0})
        mine = score if kind != "not_ours" else now + 3  # the holder believes its own score
        calls.append((task_id, 0, [mine if mine is not None else now + 3, 1]))
    pipe.execute()
    replies = renew(r, expiry, calls)
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
            assert marker.decode() == f"{reply} {H}"
        elif kind == "ours_no_hash":  # no stub hash created
            assert not r.exists(keys.task_key(Q, task_id))
        elif kind == "not_ours":
            assert score == now + 40 and int(marker) == now + 40  # left to its holder
        elif kind == "ours_late":
            assert score == now - LEASE_FENCE_GRACE - 5
        else:
            assert score is None
    assert int(r.get(keys.lease_renewal(Q, H))) == expiry
    assert 0 < r.ttl(keys.lease_renewal(Q, H)) <= RENEWAL_RECORD_SECONDS


def test_a_marked_task_is_renewed_without_a_write_to_its_hash_and_stays_fenced(r):
    """The first renewal marks every task (one EXISTS for all, one HSET each); the later ones
    write the leases and the holder's record only: no HSET, and every lease still reads as
    fenced, by the record."""
    now = int(r.time()[0])
    lease = keys.lease(Q)
    ids = [f"all{i}" for i in range(300)]
    r.zadd(lease, dict.fromkeys(ids, now + 3))
    for task_id in ids:
        r.hset(keys.task_key(Q, task_id), mapping={"state": "active", FENCED_LEASE_FIELD: now + 3})
    assert all(fenced_now(r).values())  # as dequeued: the marker is the score
    assert renew(r, now + 10, [(i, 0, [now + 3]) for i in ids]) == [now + 10] * len(ids)
    for task_id in ids:
        assert r.hget(keys.task_key(Q, task_id), FENCED_LEASE_FIELD).decode() == f"{now + 10} {H}"
    before = hset_calls(r)
    for expiry in (now + 11, now + 12, now + 13):
        assert renew(r, expiry, [(i, 1, [expiry - 1]) for i in ids]) == [expiry] * len(ids)
    assert hset_calls(r) == before
    for task_id in ids:
        assert r.zscore(lease, task_id) == now + 13
        assert r.hget(keys.task_key(Q, task_id), FENCED_LEASE_FIELD).decode() == f"{now + 10} {H}"
    assert int(r.get(keys.lease_renewal(Q, H))) == now + 13
    assert set(fenced_now(r).values()) == {True}


def test_a_marker_that_matches_neither_its_score_nor_its_holders_record_is_not_fenced(r):
    """Adversarial: markers left by an earlier holding of ours on a lease someone else wrote
    since (a Go server after a Go recoverer took it: asynq's scripts never clear our field),
    a holder whose record is gone, a record of another holder, an older agent's plain marker.
    Only a lease whose score is the marker's, or the named holder's latest record, is fenced:
    everything else keeps asynq's 30 s rule."""
    now = int(r.time()[0])
    lease = keys.lease(Q)
    cases = {
        "plain_equal": (now + 5, f"{now + 5}", True),            # dequeued, never renewed
        "plain_stale": (now + 50, f"{now + 5}", False),          # an older agent's, stale
        "record_equal": (now + 7, f"{now + 1} {H}", True),       # renewed since its marking
        "marker_equal": (now + 1, f"{now + 1} {H}", True),
        "go_lease": (now + 37, f"{now + 1} {H}", False),         # a Go server's lease now
        "gone_holder": (now + 7, f"{now + 1} gone", False),      # its holder's record expired
        "other_holder": (now + 7, f"{now + 1} other", False),    # "other" renewed to now + 8
        "no_marker": (now + 7, None, False),
        "garbage": (now + 7, "x y z", False),
    }
    r.set(keys.lease_renewal(Q, H), now + 7)
    r.set(keys.lease_renewal(Q, "other"), now + 8)
    r.set(keys.lease_renewal("elsewhere", "gone"), now + 7)  # another queue's record
    for task_id, (score, marker, _) in cases.items():
        r.zadd(lease, {task_id: score})
        r.hset(keys.task_key(Q, task_id), "msg", b"x")
        if marker is not None:
            r.hset(keys.task_key(Q, task_id), FENCED_LEASE_FIELD, marker)
    assert fenced_now(r) == {task_id: want for task_id, (_, _, want) in cases.items()}


def test_a_lease_kept_above_the_renewal_gets_its_own_marker(r):
    """A lease whose score stays above the renewal's expiry (never lowered) cannot be the
    record's score: it is marked again with its own score, even if it was marked before."""
    now = int(r.time()[0])
    r.zadd(keys.lease(Q), {"ahead": now + 30})
    r.hset(keys.task_key(Q, "ahead"), mapping={"msg": "x", FENCED_LEASE_FIELD: f"{now + 2} {H}"})
    assert renew(r, now + 10, [("ahead", 1, [now + 30])]) == [now + 30]
    assert r.hget(keys.task_key(Q, "ahead"), FENCED_LEASE_FIELD).decode() == f"{now + 30} {H}"
    assert fenced_now(r) == {"ahead": True}
