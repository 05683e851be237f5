"""How pytest-xdist hands the suite to its workers: ``scripts/test.sh`` runs pytest with
``-n N --dist loadgroup``, which tests/conftest.py maps to ``GroupScheduling`` below.

A unit of work is a test file, or a named group of files that must run one after another on
one worker: a group's tests never run beside each other. Long units start first, so that the
run does not end waiting for one long file that started late.

(xdist's own ``--dist loadgroup`` puts an ``xdist_group`` mark's name into the node ID, which
pytest 9.2 no longer lets it do: the marks are silently ignored, pytest-xdist issue 1386. So
the groups are named here, by file.)
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# Files whose tests must not run beside each other, by group.
GROUPS: dict[str, tuple[str, ...]] = {
    # Its module fixture starts the long scenarios in the background for the tests it runs:
    # one worker must run the whole file. Recovery times are measured.
    "chaos": ("tests/chaos/test_chaos.py",),
    # Real agents with wall-clock bounds (handlers at once, timeouts on time, an idle agent's
    # CPU, a scheduled task on time): not beside each other.
    "timing": ("tests/test_capacity_e2e.py", "tests/test_e2e_agent.py", "tests/test_scheduler_e2e.py",
              "tests/test_flow_e2e.py"),
}

# Units that took 30 s or more (a parallel run, 2 cores), longest first; the others follow
# in collection order. A name that no longer exists is ignored.
FIRST = (
    "chaos",
    "timing",
    "tests/test_bench_smoke.py",
    "tests/fuzz/test_protocol_fuzz.py",
    "tests/fuzz/test_config_fuzz.py",
    "tests/test_recovery.py",
    "tests/test_cli_secrets.py",
    "tests/test_redis_topologies.py",
    "tests/test_aggregation.py",
    "tests/test_batching.py",
)

UNIT_OF_FILE = {path: group for group, paths in GROUPS.items() for path in paths}


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its group's name, or its file."""
    path = nodeid.split("::", 1)[0]
    return UNIT_OF_FILE.get(path, path)


class GroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with the units above."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def schedule(self) -> None:
        if self.collection is None and self.collection_is_completed:
            # The base class fills the work queue in collection order (or by test count):
            # keys put in first keep their place when it fills them.
            self.config.option.loadscopereorder = False
            collection = next(iter(self.registered_collections.values()), [])
            present = {unit_of(nodeid) for nodeid in collection}
            for unit in FIRST:
                if unit in present:
                    self.workqueue[unit] = {}
        super().schedule()
