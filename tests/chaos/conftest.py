"""Prints the chaos report table at the end of a run that ran any chaos scenario."""

from __future__ import annotations

from tests.chaos.harness import REPORTS, table


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if REPORTS:
        terminalreporter.section("chaos report")
        terminalreporter.write_line(table(REPORTS))
