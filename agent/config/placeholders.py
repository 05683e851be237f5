"""``${VAR}`` / ``${VAR:-default}`` / ``$${`` expansion, shared by the agent's config and the
control server's queues file. Applied to parsed string values, never to raw YAML text."""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_text(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """The text with its placeholders replaced, and what went wrong (malformed placeholders,
    unset variables without a default), each as a message for the user."""
    failures: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        inner = match.group(1)
        name, has_default, default = (inner or "").partition(":-")
        if inner is None or not VAR_NAME.fullmatch(name):
            shown = whole if inner is not None else "${"
            failures.append(f'malformed placeholder "{shown}": write ${{NAME}} or ${{NAME:-default}} '
                            f'(and $${{ for a literal "${{")')
            return ""
        value = environ.get(name)
        if has_default:
            return value if value else default
        if value is None:
            failures.append(f"environment variable {name} is not set "
                            f"(write ${{{name}:-default}} to give a default)")
            return ""
        return value

    return PLACEHOLDER.sub(substitute, text), failures
