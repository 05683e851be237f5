"""One line per test file as soon as its last test finishes: the time since the run started,
the file, its outcome counts and the time its tests took.

The full suite runs for minutes; a line per file says how far it got and what failed without
waiting for the summary. It works with and without pytest-xdist (on xdist it runs in the
controller, which sees every worker's reports). In quiet mode (``-q``) it replaces pytest's
progress dots.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

OUTCOME_ORDER = ("failed", "error", "passed", "skipped", "xfailed", "xpassed")


def file_of(nodeid: str) -> str:
    """``tests/test_x.py::test_y[a::b]@group`` -> ``tests/test_x.py``."""
    return nodeid.split("::", 1)[0].split("@", 1)[0]


@dataclass
class FileTally:
    expected: int = 0
    finished: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)


class FileProgress:
    """Registered by ``tests/conftest.py`` in the process that writes the terminal output."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.files: dict[str, FileTally] = defaultdict(FileTally)
        self.outcome_of: dict[str, str] = {}  # nodeid -> its worst outcome so far
        self.counted = False
        self.quiet = config.get_verbosity() < 0

    # -- how many tests each file has ------------------------------------------------------

    def _expect(self, nodeids: list[str]) -> None:
        if self.counted:
            return
        self.counted = True
        for nodeid in nodeids:
            self.files[file_of(nodeid)].expected += 1

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.items:  # empty in an xdist controller: its workers collect
            self._expect([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:  # noqa: ARG002
        self._expect(ids)  # every worker collects the same tests: the first answer counts

    # -- outcomes --------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tally = self.files[file_of(report.nodeid)]
        tally.seconds += report.duration
        outcome = self._outcome(report)
        if outcome is None:
            return
        previous = self.outcome_of.get(report.nodeid)
        if previous is None or OUTCOME_ORDER.index(outcome) < OUTCOME_ORDER.index(previous):
            self.outcome_of[report.nodeid] = outcome

    @staticmethod
    def _outcome(report: pytest.TestReport) -> str | None:
        if hasattr(report, "wasxfail"):
            return "xpassed" if report.passed else "xfailed"
        if report.failed:
            return "failed" if report.when == "call" else "error"
        if report.skipped:
            return "skipped"
        if report.when == "call":
            return "passed"
        return None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_teststatus(self, report, config):  # noqa: ARG002
        """In quiet mode, no progress dots: the per-file lines say the same, readably."""
        outcome = yield
        result = outcome.get_result()
        if self.quiet and result and isinstance(result, tuple) and len(result) == 3:
            category, _letter, word = result
            outcome.force_result((category, "", word))

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:  # noqa: ARG002
        name = file_of(nodeid)
        tally = self.files[name]
        tally.outcomes[self.outcome_of.pop(nodeid, "passed")] += 1
        tally.finished += 1
        if tally.finished == tally.expected:
            self._write(name, tally)

    def _write(self, name: str, tally: FileTally) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        elapsed = int(time.monotonic() - self.started)
        counts = ", ".join(f"{tally.outcomes[o]} {o}" for o in OUTCOME_ORDER if tally.outcomes[o])
        bad = tally.outcomes["failed"] or tally.outcomes["error"]
        done = sum(t.finished for t in self.files.values())
        total = sum(t.expected for t in self.files.values())
        reporter.ensure_newline()
        reporter.write_line(
            f"[{elapsed // 60:2d}:{elapsed % 60:02d} {done:4d}/{total}] {name}: {counts} "
            f"in {tally.seconds:.1f}s",
            red=bool(bad), green=not bad,
        )
