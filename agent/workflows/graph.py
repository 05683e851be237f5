"""Workflow shapes and how they become a graph of nodes.

``sig(type, payload, **options)`` names one task; ``Chain`` runs its steps one after another,
passing each step's result to the next; ``Group`` runs its members at once and, with
``then``, runs one callback after all of them with their results in order. Shapes nest
(a chain step may be a group, a group member a chain).

What a step receives: a step after a single task gets ``"previous": <its result>`` added to
its payload (a JSON object); a step after a group, and a group's ``then``, gets
``"results": [<each member's result, in order>]``. ``sig(..., pass_result=False)`` opts out
(the payload is sent as given, and may then be anything).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from agent.broker.options import EnqueueOptions

__all__ = ["Chain", "Group", "Node", "Sig", "build_graph", "sig"]

MAX_NODES = 100_000
DEFAULT_RETENTION = 86400.0  #: a step's task (and result) is kept a day unless told otherwise
#: EnqueueOptions a step may set; the workflow chooses the task ID and ``unique_ttl`` would
#: make a step's enqueue refusable, which a workflow cannot wait on.
_STEP_OPTIONS = {"queue", "max_retry", "timeout", "deadline", "process_in", "retention", "group",
                 "headers"}


@dataclass(frozen=True)
class Sig:
    """One task of a workflow: its type, payload and enqueue options."""

    type: str
    payload: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    pass_result: bool = True


def sig(type: str, payload: Any = None, *, pass_result: bool = True, **options: Any) -> Sig:  # noqa: A002
    """A workflow step: ``sig("resize", {"url": u}, queue="images", max_retry=3)``."""
    if not isinstance(type, str) or not type.strip():
        raise ValueError("sig: the task type must be a non-blank string")
    unknown = sorted(set(options) - _STEP_OPTIONS)
    if unknown:
        raise ValueError(f"sig({type!r}): unknown option(s) {', '.join(unknown)}; a step takes "
                         f"{', '.join(sorted(_STEP_OPTIONS))} (the workflow sets task_id)")
    retention = options.get("retention", DEFAULT_RETENTION)
    if not retention or float(getattr(retention, "total_seconds", lambda: retention)()) <= 0:
        raise ValueError(f"sig({type!r}): retention must be above 0: a step keeps its result "
                         "for its successors")
    EnqueueOptions(**options).validate()  # a bad queue name or value fails here, naming it
    return Sig(type, payload, dict(options), pass_result)


@dataclass(frozen=True)
class Chain:
    steps: tuple[Any, ...]


@dataclass(frozen=True)
class Group:
    members: tuple[Any, ...]
    then: Sig | None = None


@dataclass
class Node:
    """One task of the graph; ``deps`` and ``children`` are node IDs (``"0"``, ``"1"``, ...)."""

    id: str
    type: str = ""
    payload: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    passes: str | None = None  #: "previous", "results" or None
    external: tuple[str, str] | None = None  #: (queue, task id) of a task enqueued separately

    def to_json(self) -> str:
        data: dict[str, Any] = {"deps": self.deps, "children": self.children}
        if self.external is not None:
            data["external"] = list(self.external)
        else:
            data.update(type=self.type, opts=_plain_options(self.options), passes=self.passes)
            if isinstance(self.payload, bytes):
                data["payload_b64"] = base64.b64encode(self.payload).decode()
            else:
                data["payload"] = self.payload
        return json.dumps(data, separators=(",", ":"))


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        if hasattr(value, "total_seconds"):
            value = value.total_seconds()
        elif hasattr(value, "timestamp"):
            value = value.timestamp()
        out[key] = value
    out.setdefault("retention", DEFAULT_RETENTION)
    return out


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bytes: "bytes", int: "a number", float: "a number",
            bool: "true or false"}.get(type(value), type(value).__name__)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, deps: list[str], **fields: Any) -> Node:
        if len(self.nodes) >= MAX_NODES:
            raise ValueError(f"a workflow has at most {MAX_NODES:,} tasks")
        node = Node(id=str(len(self.nodes)), deps=list(deps), **fields)
        for dep in deps:
            self.nodes[int(dep)].children.append(node.id)
        self.nodes.append(node)
        return node

    def build(self, element: Any, deps: list[str], passes: str | None) -> list[str]:
        """Adds ``element`` after ``deps``; returns its terminal node IDs."""
        if isinstance(element, Sig):
            mode = None if not deps or not element.pass_result else (
                "previous" if passes == "previous" and len(deps) == 1 else "results")
            if mode and element.payload is not None and not isinstance(element.payload, dict):
                raise ValueError(f"sig({element.type!r}): a step that receives the previous result "
                                 f"needs a JSON object payload (or none), got {_kind(element.payload)}; "
                                 "or pass_result=False")
            return [self.add(deps, type=element.type, payload=element.payload,
                             options=element.options, passes=mode).id]
        if isinstance(element, (list, tuple)):
            element = Chain(tuple(element))
        if isinstance(element, Chain):
            if not element.steps:
                raise ValueError("a chain needs at least one step")
            current, mode = deps, passes
            for step in element.steps:
                current = self.build(step, current, mode)
                mode = "results" if isinstance(step, Group) and step.then is None else "previous"
            return current
        if isinstance(element, Group):
            if not element.members:
                raise ValueError("a group needs at least one member")
            ends: list[str] = []
            for member in element.members:
                ends.extend(self.build(member, deps, passes))
            if element.then is None:
                return ends
            return self.build(element.then, ends, "results")
        raise ValueError(f"a workflow step must be sig(...), a chain or a group, got {_kind(element)}")


def build_graph(element: Any, external: list[tuple[str, str]] | None = None) -> list[Node]:
    """The nodes of a workflow; ``external`` tasks (``depends_on``) come first and the whole
    shape depends on them."""
    builder = _Builder()
    deps = [builder.add([], external=ext).id for ext in external or []]
    builder.build(element, deps, None)
    return builder.nodes


def parse_shape(data: Any, path: str = "workflow") -> Any:
    """A shape from JSON (``POST /workflows``): ``{"type", "payload", ...options}`` is a
    task, ``{"chain": [...]}`` a chain, ``{"group": [...], "then": {...}}`` a group.
    Raises ValueError naming the path of the bad part."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object (a task, a chain or a group), got {_kind(data)}")
    if "chain" in data:
        steps = data["chain"]
        if not isinstance(steps, list) or not steps:
            raise ValueError(f"{path}.chain: expected a non-empty list of steps")
        return Chain(tuple(parse_shape(s, f"{path}.chain[{i}]") for i, s in enumerate(steps)))
    if "group" in data:
        members = data["group"]
        if not isinstance(members, list) or not members:
            raise ValueError(f"{path}.group: expected a non-empty list of members")
        then = data.get("then")
        parsed_then = None
        if then is not None:
            parsed_then = parse_shape(then, f"{path}.then")
            if not isinstance(parsed_then, Sig):
                raise ValueError(f"{path}.then: expected one task")
        return Group(tuple(parse_shape(m, f"{path}.group[{i}]") for i, m in enumerate(members)),
                     parsed_then)
    fields = dict(data)
    task_type = fields.pop("type", None)
    payload = fields.pop("payload", None)
    pass_result = fields.pop("pass_result", True)
    if not isinstance(pass_result, bool):
        raise ValueError(f"{path}.pass_result: expected true or false")
    try:
        return sig(task_type, payload, pass_result=pass_result, **fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
