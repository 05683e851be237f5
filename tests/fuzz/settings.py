"""Bounded hypothesis settings for CI; ``FUZZ_EXAMPLES=2000 pytest tests/fuzz`` for a long run."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def bounded(default: int):
    """``@bounded(200)``: that many examples (or $FUZZ_EXAMPLES), no deadline, derandomized in CI."""
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
