"""Bounds that the agent's config and the control server's queues file both obey.

A config is written by people, but it may also come from a template, a generator or someone
hostile; these bounds keep a mistake (or an attack) from turning into 116,000 queues, a queue
name that no tool can display, or an environment the kernel refuses to exec. The reference
is the "Limits" section of ``docs/configuration.md``.
"""

from __future__ import annotations

__all__ = [
    "MAX_CONCURRENCY", "MAX_DURATION", "MAX_ENTRIES", "MAX_ENV_ENTRY_BYTES", "MAX_INT32",
    "MAX_QUEUES", "MAX_QUEUE_NAME", "MAX_SIZE", "MAX_WEIGHT", "env_value_problem", "queue_name_problem",
    "shown_char",
]

MAX_QUEUES = 1000  #: queues one agent consumes, sub-queues counted (each costs Redis calls per fetch)
MAX_QUEUE_NAME = 256  #: characters in a queue name (Redis keys take more; people cannot read more)
MAX_ENTRIES = 1000  #: entries of any other list or mapping (env vars, secrets, vaults, API keys)
MAX_ENV_ENTRY_BYTES = 128 * 1024  #: ``NAME=value`` in UTF-8: Linux's MAX_ARG_STRLEN, exec fails above
MAX_INT32 = 2**31 - 1  #: asynq stores retry counts, weights and concurrency as protobuf int32
MAX_CONCURRENCY = 100_000  #: handlers at once in one agent (256 children x 256 threads is 65,536)
MAX_WEIGHT = 1_000_000  #: a queue's weight
MAX_DURATION = 7 * 24 * 3600.0  #: seconds; a longer timeout or delay is a unit mistake (and overflows timers)
MAX_SIZE = 2**50  #: bytes (1 PiB); above it resource limits overflow


def shown_char(char: str) -> str:
    """How a character reads in a message: ``"x"``, or its code point (``U+0001``) when it is
    not printable (a control or bidi character would garble the message itself)."""
    return f'"{char}"' if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"


def queue_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue name as far as length and characters go, or None.

    asynq accepts any name with a non-blank character and puts it raw inside the ``{...}``
    hash tag of every key; we also want every tool (the asynq CLI, asynqmon, logs) to show it
    as it is, so only printable characters and no whitespace.
    """
    if not name:
        return "a queue name must not be empty"
    if len(name) > MAX_QUEUE_NAME:
        return f"a queue name is at most {MAX_QUEUE_NAME} characters, got {len(name)}"
    bad = next((c for c in name if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        return (f"a queue name is printable characters without whitespace; it contains {shown_char(bad)} "
                f"at position {name.index(bad) + 1}")
    return None


def env_value_problem(name: str, value: str) -> str | None:
    """Why ``NAME=value`` cannot be put in a child's environment, or None (the value is not shown)."""
    if "\0" in value:
        return "the value contains a NUL character, which an environment variable cannot hold"
    size = len(name.encode()) + 1 + len(value.encode("utf-8", "surrogatepass"))
    if size >= MAX_ENV_ENTRY_BYTES:
        return (f"NAME=value is {size:,} bytes; an environment entry must be under "
                f"{MAX_ENV_ENTRY_BYTES // 1024} KiB (the kernel refuses to start a process otherwise)")
    return None
