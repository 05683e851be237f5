"""The error ``load_config`` raises: every problem found, each with the path of its field."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_REPORTED", "ConfigError", "Problem"]

MAX_REPORTED = 100  #: problems a report lists one per line


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration.

    Attributes:
        path: where, e.g. ``worker.queues[2].weight``; a file name for file-level problems.
        message: what was expected and what was found (never a secret's value).
        line: the line in the config file, when the value came from it.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}: {self.message}{where}"


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists all of them, in file order.

    ``str(error)`` is a report: a header ``<source>: N problems`` and one indented line each
    (the first :data:`MAX_REPORTED`, then how many more: a generated file can have thousands).
    """

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        header = f"{self.source or 'configuration'}: {count} problem{'s' if count != 1 else ''}"
        lines = [header, *(f"  {p}" for p in self.problems[:MAX_REPORTED])]
        if count > MAX_REPORTED:
            lines.append(f"  ... and {count - MAX_REPORTED} more")
        return "\n".join(lines)
