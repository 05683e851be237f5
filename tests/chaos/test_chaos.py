"""The chaos suite (issue 8). Each scenario has a reduced form that runs in the default test
run and a full form marked ``slow`` (``pytest -m slow tests/chaos``). Every scenario prints a
report row; the table is printed at the end of the run (see tests/conftest.py) and, with
``CHAOS_REPORT=file``, appended to that file as JSON lines.

The reduced SIGKILL and network-stall scenarios spend most of their time waiting for
recovery (10 s lease + 2 s cutoff, docs/reliability.md "Fast recovery"): they start in the background when the
first chaos test runs, while the shorter scenarios run in the foreground, and their tests
(last in this file) collect the results. Each scenario has its own Redis and agents.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.chaos import scenarios
from tests.chaos.harness import publish

SCALES = [pytest.param("reduced", id="reduced"),
          pytest.param("full", id="full", marks=pytest.mark.slow)]
BACKGROUND = {"test_sigkill_of_agents_loses_nothing[reduced]": scenarios.sigkill_agents,
              "test_network_stall_longer_than_the_lease[reduced]": scenarios.network_stall}


@pytest.fixture(scope="module")
def background(request, tmp_path_factory):
    """The long reduced scenarios that this run selected, started now in threads."""
    selected = {item.name for item in request.session.items}
    wanted = {name: run for name, run in BACKGROUND.items() if name in selected}
    pool = ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="chaos")
    futures: dict[str, Future] = {
        name: pool.submit(run, tmp_path_factory.mktemp(name.split("[")[0][5:40]), "reduced")
        for name, run in wanted.items()}
    yield futures
    pool.shutdown(wait=True)


def _run(request, background, scenario, tmp_path, scale):
    future = background.get(request.node.name)
    publish(future.result() if future is not None else scenario(tmp_path, scale))


@pytest.mark.timeout(1500)  # the full form: crash-phase throughput is low (docs/reliability.md)
@pytest.mark.parametrize("scale", SCALES)
def test_child_crashes_are_recorded_and_throughput_recovers(request, background, tmp_path, scale):
    _run(request, background, scenarios.child_crashes, tmp_path, scale)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scale", SCALES)
def test_redis_restart_loses_nothing(request, background, tmp_path, scale):
    _run(request, background, scenarios.redis_restart, tmp_path, scale)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scale", SCALES)
def test_sigterm_storm_leaves_nothing_active(request, background, tmp_path, scale):
    _run(request, background, scenarios.sigterm_storm, tmp_path, scale)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scale", SCALES)
def test_sigkill_of_agents_loses_nothing(request, background, tmp_path, scale):
    _run(request, background, scenarios.sigkill_agents, tmp_path, scale)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scale", SCALES)
def test_network_stall_longer_than_the_lease(request, background, tmp_path, scale):
    _run(request, background, scenarios.network_stall, tmp_path, scale)
