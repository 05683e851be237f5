"""Where work may run: agent labels (``worker.labels``), queue requirements (``requires``) and
GPU devices (``deployment.gpus``, ``deployment.processes_per_gpu``).

An agent takes from a queue only when its labels include every label the queue requires
(from the config's queue mapping or the control server's queues file). GPU placement gives
each warm child exactly one device through ``CUDA_VISIBLE_DEVICES`` (agent/supervisor/gpus.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .values import Invalid, describe, printable

MAX_LABELS = 64  #: labels of an agent, or required by a queue
MAX_GPUS = 64  #: devices in deployment.gpus
MAX_GPU_INDEX = 1023
MAX_PROCESSES_PER_GPU = 64
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
LABEL_EXPECTED = "a list of labels like [gpu, a100] (letters, digits, '_', '.', '-'; at most 64 characters each)"


def parse_labels(value: Any, what: str = "labels") -> tuple[str, ...]:
    """A list of labels (a single string is one label); duplicates are dropped, order kept."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise Invalid(LABEL_EXPECTED)
    if len(items) > MAX_LABELS:
        raise Invalid(LABEL_EXPECTED, f"{len(items):,} {what}, above the limit of {MAX_LABELS}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not _LABEL.fullmatch(item):
            shown = printable(item, 40) if isinstance(item, str) else describe(item)
            raise Invalid(LABEL_EXPECTED, f"expected {LABEL_EXPECTED}; {shown!s} is not a label")
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_gpus(value: Any) -> tuple[int, ...] | str:
    """``all``, or device indices (a list, or one integer); the environment's ``0,1`` too."""
    expected = 'all, or a list of device indices like [0, 1]'
    if isinstance(value, list) and len(value) == 1 and value[0] == "all":
        value = "all"  # RUNDOWN_DEPLOYMENT_GPUS=all
    if value == "all":
        return "all"
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items:
        raise Invalid(expected)
    if len(items) > MAX_GPUS:
        raise Invalid(expected, f"{len(items)} devices, above the limit of {MAX_GPUS}")
    out: list[int] = []
    for item in items:
        number = item
        if isinstance(item, str) and item.strip().isdigit():
            number = int(item.strip())
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_GPU_INDEX:
            raise Invalid(expected, f"expected {expected}; {describe(item)} is not a device index "
                          f"(a whole number from 0 to {MAX_GPU_INDEX})")
        if number in out:
            raise Invalid(expected, f"device {number} is listed twice")
        out.append(number)
    return tuple(out)


def missing(requires: Iterable[str], labels: Iterable[str]) -> list[str]:
    """The required labels an agent with ``labels`` lacks."""
    have = set(labels)
    return [label for label in requires if label not in have]


def requirement_text(queue: str, requires: Iterable[str], labels: Iterable[str]) -> str:
    lacking = missing(requires, labels)
    mine = ", ".join(labels) or "none"
    return (f"queue {queue} requires the label{'s' if len(lacking) > 1 else ''} "
            f"{', '.join(lacking)}, which this agent lacks (worker.labels: {mine}): "
            "it never takes tasks from that queue")


def check_requirements(queues: Iterable[Any], labels: tuple[str, ...], warn: Callable[[str], None],
                       problem: Callable[[str, str], None]) -> None:
    """Config check: a warning per queue this agent will not serve, a problem if it serves none."""
    specs = list(queues)
    skipped = [q for q in specs if missing(q.requires, labels)]
    for spec in skipped:
        warn(requirement_text(spec.name, spec.requires, labels))
    if specs and len(skipped) == len(specs):
        problem("worker.labels", "every queue in worker.queues requires labels this agent lacks, so it "
                "would take no task: add the labels to worker.labels or remove the requirements")


def serve_only_labelled(weights: Mapping[str, int], requires: Mapping[str, tuple[str, ...]],
                        labels: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """The queues an agent with ``labels`` may take from, and why the others are left out.

    ``requires`` maps a queue or a parent queue (whose sub-queues it covers) to its labels.
    """
    kept: dict[str, int] = {}
    notes: list[str] = []
    for queue, weight in weights.items():
        parent = queue.split(".", 1)[0]
        needed = tuple(dict.fromkeys((*requires.get(parent, ()), *requires.get(queue, ()))))
        if missing(needed, labels):
            notes.append(requirement_text(queue, needed, labels))
        else:
            kept[queue] = weight
    return kept, notes


def placement_summary(config: Any) -> list[str]:
    """``-validate`` lines for labels, queue requirements and GPU placement (none if unused)."""
    worker, deployment = config.worker, config.deployment
    lines = []
    required = [f"{q.name} requires {', '.join(q.requires)}" for q in worker.queues if q.requires]
    if worker.labels or required:
        lines.append(f"labels: {', '.join(worker.labels) or 'none'}"
                     + (f"; {'; '.join(required)}" if required else ""))
    if deployment.gpus is not None:
        per = deployment.processes_per_gpu or 1
        if deployment.gpus == "all":
            lines.append(f"gpus: all (found at start with nvidia-smi -L), {per} child process(es) per GPU")
        else:
            devices = ", ".join(str(d) for d in deployment.gpus)
            lines.append(f"gpus: {devices}; {deployment.processes} child process(es) spread evenly, "
                         "each seeing one device (CUDA_VISIBLE_DEVICES)")
    return lines
