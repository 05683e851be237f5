"""Shared fixtures: one real redis-server per test session (per xdist worker), flushed
before every test; per-file progress lines; each xdist worker's own range of ports."""

from __future__ import annotations

import os

import pytest
import redis

from agent.local_redis import PORT_RANGE_VAR, LocalRedis
from tests.chaos.harness import REPORTS, Report, table
from tests.progress import FileProgress

# Ports for the servers tests start, split between xdist workers: below the kernel's ephemeral
# range (32768-60999 on Linux), so no outgoing connection takes one, and with room above for
# a cluster node's bus port (+10000) outside every worker's range.
WORKER_PORTS = (12000, 22000)


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in an xdist worker
    if worker is None:
        config.pluginmanager.register(FileProgress(config), "file-progress")
    elif PORT_RANGE_VAR not in os.environ:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(worker.removeprefix("gw"))
        size = (WORKER_PORTS[1] - WORKER_PORTS[0]) // max(count, 1)
        low = WORKER_PORTS[0] + index * size
        os.environ[PORT_RANGE_VAR] = f"{low}-{low + size - 1}"  # inherited by agents, bench runs


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``: the groups of tests/scheduling.py."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.scheduling import GroupScheduling

    return GroupScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand the chaos reports it made to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["chaos_reports"] = [vars(report) for report in REPORTS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ARG001
    REPORTS.extend(Report(**fields) for fields in getattr(node, "workeroutput", {}).get("chaos_reports", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """The chaos report table, after a run that ran any chaos scenario."""
    if REPORTS:
        terminalreporter.section("chaos report")
        terminalreporter.write_line(table(REPORTS))


@pytest.fixture(scope="session")
def redis_server():
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    """A synchronous client on a freshly flushed Redis, for asserting key state."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
