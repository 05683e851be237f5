"""The one way rundown reads YAML files: safe tags only, with bounded size, nesting and aliases.

YAML aliases (``*name``) let a 1 KB file describe a tree of billions of values (the "billion
laughs" attack): PyYAML shares the aliased objects, but anything that walks or copies the tree
afterwards (placeholder expansion, validation) expands it. So the composed node graph is checked
before a single Python object is built: its size with every alias expanded, its depth, and that
no alias refers to a node that contains it. Ordinary anchors (``<<: *defaults``) stay well
within the limits.

Usage::

    try:
        data = read_yaml_file(path)
    except YamlFileError as exc:
        print(exc)          # "config.yml: YAML syntax error at line 3, column 5: ..."
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_TEXT", "YamlFileError", "YamlLimits", "parse_yaml",
           "read_yaml_file"]

MAX_FILE_BYTES = 1_000_000  #: 1 MB: far above any real config or queues file
MAX_NODES = 100_000  #: values (scalars, lists, mappings), every alias counted as a copy
MAX_DEPTH = 64  #: lists / mappings inside each other
MAX_TEXT = 2_000_000  #: characters of all scalars, every alias counted as a copy (twice the largest file)

# libyaml when the wheel has it (about 3x faster); the pure-Python parser otherwise.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlLimits:
    max_bytes: int = MAX_FILE_BYTES
    max_nodes: int = MAX_NODES
    max_depth: int = MAX_DEPTH
    max_text: int = MAX_TEXT


class YamlFileError(Exception):
    """A YAML file that cannot be read, does not parse, or is over a limit.

    Attributes:
        source: the file, as given.
        reason: a complete sentence for the user, with the line and column when known; never
            the text of the offending line (it may hold a secret).
        line, column: 1-based position, when the problem has one.
        syntax: True for YAML syntax errors; ``problem`` is then the parser's own description.
    """

    def __init__(self, source: str, reason: str, *, line: int | None = None, column: int | None = None,
                 syntax: bool = False, problem: str = "") -> None:
        self.source = source
        self.reason = reason
        self.line = line
        self.column = column
        self.syntax = syntax
        self.problem = problem or reason
        super().__init__(f"{source}: {reason}")  # the reason says where, when it knows

    @property
    def where(self) -> str:
        """``file`` or ``file:line:column``."""
        return f"{self.source}:{self.line}:{self.column}" if self.line is not None else self.source


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe tags only; a value that a constructor cannot build is a YAML error, not a crash."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:  # 2020-13-45, an int of 5000 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {_kind(node)}: {exc}", node.start_mark) from None


def read_yaml_file(path: str | Path, *, limits: YamlLimits = YamlLimits(),
                   inspect: Callable[[yaml.Node], None] | None = None) -> Any:
    """Read, check and load one YAML document (None for an empty file).

    Args:
        limits: the size, node and depth bounds.
        inspect: called with the root node once it passed the checks, before construction
            (which merges ``<<`` keys into their mappings), e.g. to index line numbers.

    Raises:
        YamlFileError: the file is missing, unreadable, over a limit or not valid YAML.
    """
    source = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise YamlFileError(source, "file not found") from None
    except IsADirectoryError:
        raise YamlFileError(source, "is a directory, not a YAML file") from None
    except OSError as exc:
        raise YamlFileError(source, f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > limits.max_bytes:
        raise YamlFileError(source, f"the file is larger than {_size(limits.max_bytes)}, the limit for "
                            "YAML files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(source, f"is not UTF-8 text (byte {exc.start + 1} is invalid)") from None
    return parse_yaml(text, source, limits=limits, inspect=inspect)


def parse_yaml(text: str, source: str, *, limits: YamlLimits = YamlLimits(),
               inspect: Callable[[yaml.Node], None] | None = None) -> Any:
    """:func:`read_yaml_file` for text already in memory; ``source`` names it in errors."""
    if len(text) > limits.max_bytes:
        raise YamlFileError(source, f"the text is larger than {_size(limits.max_bytes)}, the limit for YAML")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_graph(root, source, limits)
        if inspect is not None:
            inspect(root)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(source, exc) from None
    except yaml.YAMLError as exc:  # pragma: no cover - the parsers mark every error they raise
        raise YamlFileError(source, f"YAML syntax error: {type(exc).__name__}", syntax=True) from None
    except (ValueError, TypeError, OverflowError) as exc:  # pragma: no cover - a constructor's own
        raise YamlFileError(source, f"cannot load the YAML: {type(exc).__name__}") from None
    finally:
        loader.dispose()


def _syntax_error(source: str, exc: yaml.MarkedYAMLError) -> YamlFileError:
    # Built from the problem text and mark only: PyYAML's str() quotes the offending line.
    mark = exc.problem_mark or exc.context_mark
    what = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
    if mark is None:  # pragma: no cover
        return YamlFileError(source, f"YAML syntax error: {what}", syntax=True, problem=what)
    line, column = mark.line + 1, mark.column + 1
    kind = "YAML value error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    return YamlFileError(source, f"{kind} at line {line}, column {column}: {what}",
                         line=line, column=column, syntax=True, problem=what)


def _check_graph(root: yaml.Node, source: str, limits: YamlLimits) -> None:
    """Refuse a node graph whose expanded tree is too big or too deep, or that contains itself.

    An alias is the very node it names, so the graph is a DAG (or has a cycle); the expanded
    size of each node (values, and characters: one alias of a long string with a ``${VAR}`` in
    it becomes one copy per use) is computed once, iteratively (no recursion to overflow).
    """
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) of its expanded tree
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    depth = 0
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            depth -= 1
            children = [size[id(child)] for child in _children(node)]
            values = 1 + sum(n for n, _ in children)
            text = sum(c for _, c in children) + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            if values > limits.max_nodes:
                raise _limit(source, node, f"more than {limits.max_nodes:,} values once aliases are "
                                           f"expanded (the limit for YAML files; an alias bomb?)")
            if text > limits.max_text:
                raise _limit(source, node, f"more than {limits.max_text:,} characters of text once aliases "
                                           f"are expanded (the limit for YAML files)")
            size[key] = (values, text)
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _limit(source, node, "an alias refers to a list or mapping that contains it "
                                       "(recursive structures are not supported)")
        depth += 1
        if depth > limits.max_depth:
            raise _limit(source, node, f"lists and mappings are nested more than {limits.max_depth} "
                                       "levels deep (the limit for YAML files)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _limit(source: str, node: yaml.Node, message: str) -> YamlFileError:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    return YamlFileError(source, f"{message}, at line {line}, column {column}", line=line, column=column)


def _kind(node: yaml.Node) -> str:
    return "value" if isinstance(node, yaml.ScalarNode) else "list" if isinstance(
        node, yaml.SequenceNode) else "mapping"


def _size(limit: int) -> str:
    if limit % 1_000_000 == 0:
        return f"{limit // 1_000_000} MB ({limit:,} bytes)"
    return f"{limit:,} bytes"
