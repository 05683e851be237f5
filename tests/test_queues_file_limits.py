"""The control server's queues file obeys the same bounds as the agent's config: how many queues,
keys and variables, which names and values; each problem names its path."""

from __future__ import annotations

import copy

import pytest

from agent.server.queues import QueuesFileError, parse_queues

KEY = "worker-key-0123456789"
DEPLOYMENT = {"git_url": "https://git.example/acme/tasks.git", "startup_cmd": "python worker.py"}


def doc(**queues: dict) -> dict:
    return {"api_keys": [{"name": "w", "key": KEY, "role": "worker"}],
            "queues": queues or {"q": {"deployment": dict(DEPLOYMENT)}}}


def problems_of(document: dict) -> list[str]:
    with pytest.raises(QueuesFileError) as info:
        parse_queues(document, environ={})
    return info.value.problems


def test_at_most_1000_queues_counting_sub_queues():
    settings = parse_queues(doc(**{f"q{i}": {"deployment": DEPLOYMENT} for i in range(1000)}), environ={})
    assert len(settings.all_queues) == 1000
    assert problems_of(doc(**{f"q{i}": {"deployment": DEPLOYMENT} for i in range(1001)})) == [
        "queues: 1,001 queues, above the limit of 1,000"]
    subs = {f"s{i}": 1 for i in range(600)}
    assert problems_of(doc(a={"sub_queues": subs, "deployment": DEPLOYMENT},
                           b={"sub_queues": subs, "deployment": DEPLOYMENT})) == [
        "queues: 1,200 queues counting sub-queues, above the limit of 1,000 (an agent consumes at most that many)"]
    assert problems_of(doc(a={"sub_queues": {f"s{i}": 1 for i in range(1001)}, "deployment": DEPLOYMENT})) == [
        "queues.a.sub_queues: 1,001 sub-queues, above the limit of 1,000"]


@pytest.mark.parametrize(("name", "where"), [
    ("a\x01b", "queues.a\\x01b"),
    ("abc\u202efdp", "queues.abc\\u202efdp"),
    ("q" * 129, "queues." + "q" * 129),
])
def test_queue_names_with_control_characters_or_too_long_are_refused(name, where):
    (problem,) = problems_of(doc(**{name: {"deployment": DEPLOYMENT}}))
    assert problem.startswith(where[:200])
    assert "a parent queue name is letters, digits" in problem
    assert problem.isprintable()


def test_sub_queue_names_with_control_characters_are_refused():
    (problem,) = problems_of(doc(a={"sub_queues": {"hi\x1b[2J": 2}, "deployment": DEPLOYMENT}))
    assert problem == "queues.a.sub_queues.hi\\x1b[2J: sub-queue name 'hi\\x1b[2J' must be letters, digits, '-' and '_'"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(api_keys=[{"name": f"k{i}", "key": f"{KEY}{i}", "role": "client"} for i in range(1001)]),
     "api_keys: 1,001 keys, above the limit of 1,000"),
    (lambda d: d.update(vaults={f"v{i}": {"A": "b"} for i in range(1001)}),
     "vaults: 1,001 vaults, above the limit of 1,000"),
    (lambda d: d.update(vaults={"v": {f"A{i}": "b" for i in range(1001)}}),
     "vaults.v: 1,001 variables, above the limit of 1,000"),
    (lambda d: d["queues"]["q"]["deployment"].update(env_vars={f"A{i}": "b" for i in range(1001)}),
     "queues.q.deployment.env_vars: 1,001 variables, above the limit of 1,000"),
    (lambda d: d["queues"]["q"]["deployment"].update(secrets={f"A{i}": "b" for i in range(1001)}),
     "queues.q.deployment.secrets: 1,001 variables, above the limit of 1,000"),
    (lambda d: d["queues"]["q"]["deployment"].update(env_vars={"A": "x\0y"}),
     "queues.q.deployment.env_vars.A: the value contains a NUL character, which an environment variable cannot hold"),
    (lambda d: d["queues"]["q"]["deployment"].update(secrets={"TOKEN": "t" * 200_000}),
     "queues.q.deployment.secrets.TOKEN: NAME=value is 200,006 bytes; an environment entry must be under 128 KiB "
     "(the kernel refuses to start a process otherwise)"),
    (lambda d: d["queues"]["q"]["deployment"].update(processes=257),
     "queues.q.deployment.processes: must be an integer from 1 to 256 or auto"),
    (lambda d: d["queues"]["q"].update(priority=1_000_001),
     "queues.q.priority: must be an integer from 1 to 1,000,000"),
    (lambda d: d["queues"]["q"].update(sub_queues={"hi": 10**12}),
     "queues.q.sub_queues.hi: priority (the weight) must be an integer from 1 to 1,000,000, got 1000000000000"),
    (lambda d: d["queues"]["q"].update(task_defaults={"max_retry": 2**31}),
     "queues.q.task_defaults.max_retry: must be an integer from 0 to 2,147,483,647"),
])
def test_each_bound_is_a_problem_naming_its_path(change, expected):
    document = copy.deepcopy(doc())
    change(document)
    assert problems_of(document) == [expected]


def test_values_at_the_bounds_are_accepted():
    document = doc(q={"priority": 1_000_000, "deployment": {
        **DEPLOYMENT, "processes": 256, "env_vars": {f"A{i}": "b" for i in range(1000)},
        "secrets": {"TOKEN": "t" * (128 * 1024 - 7)}}, "task_defaults": {"max_retry": 2**31 - 1}})
    settings = parse_queues(document, environ={})
    assert settings.queues["q"].deployment["processes"] == 256
    assert len(settings.queues["q"].secrets["TOKEN"]) == 128 * 1024 - 7


def test_a_report_lists_the_first_100_problems():
    with pytest.raises(QueuesFileError) as info:
        parse_queues(doc(**{f"bad.{i}": {"deployment": DEPLOYMENT} for i in range(150)}), environ={})
    assert len(info.value.problems) == 150
    lines = str(info.value).splitlines()
    assert len(lines) == 102 and lines[-1] == "  ... and 50 more"
