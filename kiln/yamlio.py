"""All YAML kiln reads goes through here: safe loading only, every node keeps its position.

kiln validates the composed node tree rather than constructed Python objects, so every
problem can name the line and column of the node that caused it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import ConfigError, Problem

_SCALAR_CONSTRUCTOR = yaml.SafeLoader("")


def position(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts."""
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


def problem_at(path: str, node: yaml.Node, message: str) -> Problem:
    line, column = position(node)
    return Problem(path, line, column, message)


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose_documents(text: str | bytes, path: str, fast: bool = False) -> list[yaml.Node]:
    """Every document in ``text`` as a node tree (empty documents dropped).

    ``fast`` composes with libyaml (large inventories, rendered manifests); images.yaml uses
    the pure-Python loader, whose every failure is a Python exception with a position.
    Raises ConfigError with the line and column of the first syntax error.
    """
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, column = _line_column(data[: exc.start].decode("utf-8", "replace"))
            raise ConfigError([Problem(path, line, column, "not valid UTF-8")]) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=_FAST_LOADER if fast else yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_marked_problem(path, exc)]) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text[: exc.position])
        message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        if isinstance(exc.character, bytes):
            message = f"unacceptable byte: {exc.reason}"
        raise ConfigError([Problem(path, line, column, message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(path, 1, 1, f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise ConfigError([Problem(path, 1, 1, "YAML nesting is too deep")]) from None
    return [node for node in nodes if node is not None]


def compose_file(path: Path, display: str | None = None, fast: bool = False
                 ) -> list[yaml.Node]:
    """Read and compose ``path``; an unreadable file is a ConfigError at 1:1."""
    shown = display if display is not None else str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(shown, 1, 1, f"cannot read: {exc.strerror or exc}")]) from None
    return compose_documents(data, shown, fast)


def _marked_problem(path: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    parts = [p for p in (exc.context, exc.problem) if p]
    return Problem(path, line, column, "YAML syntax error: " + (", ".join(parts) or str(exc)))


def _line_column(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return line, column


def scalar_value(node: yaml.ScalarNode) -> Any:
    """The Python value of a scalar node under the safe schema (str, int, bool, None...).

    Raises yaml.constructor.ConstructorError (which carries a mark) for unknown tags.
    """
    return _SCALAR_CONSTRUCTOR.construct_object(node, deep=True)


def construct(node: yaml.Node) -> Any:
    """Plain Python data (dicts, lists, scalars) for a subtree, under the safe schema."""
    return _SCALAR_CONSTRUCTOR.construct_object(node, deep=True)


def mapping_items(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """The (key, value) pairs of a mapping with ``<<`` merge keys applied."""
    if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        flat = yaml.MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark)
        _SCALAR_CONSTRUCTOR.flatten_mapping(flat)
        return list(flat.value)
    return list(node.value)


def walk(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node below ``node`` once (aliases are not followed twice; no recursion loops)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, yaml.MappingNode):
            for key, value in reversed(current.value):
                stack.extend((value, key))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(reversed(current.value))
