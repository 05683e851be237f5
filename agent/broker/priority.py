"""Queue order for one fetch: asynq's weighted shuffle, or strict priority."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from functools import reduce


def normalise(weights: Mapping[str, int]) -> dict[str, int]:
    """Drop blank names and non-positive weights, then divide by the GCD (as asynq does)."""
    kept = {name: int(w) for name, w in weights.items() if name.strip() and int(w) > 0}
    if not kept:
        return {}
    divisor = reduce(math.gcd, kept.values())
    return {name: w // divisor for name, w in kept.items()}


class QueueOrder:
    """Produces the order in which queues are tried on each fetch.

    Weighted: each queue is listed ``weight`` times, the list is shuffled and the first
    occurrence of each queue kept, so the chance a queue comes first is proportional to
    its weight. Strict: by weight, highest first.
    """

    def __init__(self, weights: Mapping[str, int], strict: bool = False,
                 rng: random.Random | None = None) -> None:
        self.weights = normalise(weights)
        self.strict = strict
        self._rng = rng or random.Random()
        self._names = list(self.weights)
        self._strict_order = sorted(self._names, key=lambda q: -self.weights[q])
        self._expanded = [q for q in self._names for _ in range(self.weights[q])]

    def order(self) -> list[str]:
        if len(self._names) <= 1:
            return list(self._names)
        if self.strict:
            return list(self._strict_order)
        # Weighted sampling without replacement gives the same first-occurrence order as
        # asynq's shuffle of the expanded list, without materialising the shuffle.
        pool = list(self._expanded)
        self._rng.shuffle(pool)
        seen: dict[str, None] = {}
        for name in pool:
            if name not in seen:
                seen[name] = None
                if len(seen) == len(self._names):
                    break
        return list(seen)
