"""SlotLedger: the bookkeeping of one child's slots and prefetch (pure unit tests)."""

from __future__ import annotations

from agent.supervisor.health import Capacity, CrashSuspects
from agent.supervisor.slots import SlotLedger
from agent.supervisor.task_request import TaskRequest


def req(task_id: str, timeout: float | None = 10.0, deadline: float | None = None) -> TaskRequest:
    return TaskRequest(task_id=task_id, type="t", timeout=timeout, deadline=deadline)


def test_a_task_starts_in_a_free_slot_and_the_rest_wait_in_order():
    capacity = Capacity(8)
    ledger = SlotLedger(capacity, slots=2, prefetch=3)
    outcomes = []
    assert ledger.prefetch_room == 0  # slots free: nothing is sent to wait
    assert ledger.hold(req("a"), outcomes.append, now=100.0)
    assert ledger.hold(req("b"), outcomes.append, now=100.0)
    assert capacity.running == 2 and ledger.free_slots == 0 and ledger.prefetch_room == 3
    assert not ledger.hold(req("c"), outcomes.append, now=100.0)
    assert not ledger.hold(req("d"), outcomes.append, now=100.0)
    assert [r.task_id for r in ledger.waiting] == ["c", "d"] and ledger.prefetch_room == 1
    # b finishes at 103: c takes its slot and its 10 s start then, not when it was sent
    ledger.answered("b", now=103.0)
    assert ledger.running["c"][0] == 113.0 and capacity.running == 2
    ledger.answered("a", now=104.0)
    ledger.answered("c", now=105.0)
    assert list(ledger.running) == ["d"] and capacity.running == 1
    ledger.answered("d", now=106.0)
    assert capacity.running == 0 and ledger.free_slots == 2


def test_the_deadline_is_the_timeout_from_the_start_capped_by_the_absolute_deadline():
    ledger = SlotLedger(Capacity(), slots=1)
    ledger.hold(req("a", timeout=30, deadline=1010.0), lambda o: None, now=1000.0)
    assert ledger.running["a"][0] == 1010.0
    assert ledger.first_late(1009.9) is None and ledger.first_late(1010.0).task_id == "a"
    ledger.answered("a", now=1001.0)
    ledger.hold(req("b", timeout=None), lambda o: None, now=1000.0)
    assert ledger.running["b"][0] == 1000.0 + 1800  # asynq's default of 30 minutes


def test_a_withdrawn_task_keeps_its_slot_until_the_child_answers():
    capacity = Capacity()
    ledger = SlotLedger(capacity, slots=1)
    ledger.hold(req("a"), lambda o: None, now=0.0)
    assert ledger.take("a") is not None and ledger.take("a") is None
    assert ledger.free_slots == 0 and ledger.running_held() == [] and capacity.running == 1
    ledger.answered("a", now=1.0)
    assert ledger.free_slots == 1 and capacity.running == 0


def test_release_all_returns_what_is_still_due_and_frees_the_capacity():
    capacity = Capacity()
    ledger = SlotLedger(capacity, slots=1, prefetch=2)
    for name in "abc":
        ledger.hold(req(name), lambda o: None, now=0.0)
    assert sorted(ledger.release_all()) == ["a", "b", "c"]
    assert capacity.running == 0 and not ledger.running and not ledger.waiting


def test_crash_suspects_charge_a_lone_handler_at_once_and_a_repeat_suspect_later():
    suspects = CrashSuspects()
    assert suspects.guilty(["x"]) == ["x"]
    assert suspects.guilty(["a", "b", "c"]) == []  # no one to blame for sure
    assert suspects.guilty(["a", "d"]) == ["a"]  # a was in both deaths
