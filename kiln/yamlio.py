"""All YAML kiln reads goes through here: safe loading only, every node keeps its position.

kiln validates the composed node tree rather than constructed Python objects, so every
problem can name the line and column of the node that caused it.
"""

from __future__ import annotations

import contextlib
import gc
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


def _loader(fast: bool) -> type[yaml.SafeLoader] | type[yaml.CSafeLoader]:
    # Looked up per call: PyYAML built without libyaml has no CSafeLoader (tests take it away).
    loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = (
        getattr(yaml, "CSafeLoader", yaml.SafeLoader) if fast else yaml.SafeLoader)
    return loader


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off for the block, then back as it was.

    Composing allocates a node and two marks per event and keeps them all: the collector
    would walk the growing tree again and again, then once more when it is dropped (a fifth
    of `kiln lint`'s time on rendered manifests). A node tree holds no cycle but a recursive
    alias, collected later like any other garbage.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compose_documents(text: str | bytes, path: str, fast: bool = False) -> list[yaml.Node]:
    """Every document in ``text`` as a node tree (empty documents dropped).

    ``fast`` composes with libyaml's C loader when PyYAML has it (chart files, large
    inventories): the same nodes and marks, several times faster; images.yaml uses the
    pure-Python loader, whose messages are more precise.
    Raises ConfigError with the line and column of the first syntax error.
    """
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, column = _line_column(data[: exc.start].decode("utf-8", "replace"))
            raise ConfigError([Problem(path, line, column, "not valid UTF-8")]) from None
    loader = _loader(fast)
    try:
        with gc_paused():
            nodes = list(yaml.compose_all(text, Loader=loader))
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([marked_problem(path, exc)]) from None
    except yaml.reader.ReaderError as exc:
        # libyaml counts the offset in UTF-8 bytes, the pure-Python reader in characters
        prefix = (text[: exc.position] if loader is yaml.SafeLoader
                  else text.encode()[: exc.position].decode("utf-8", "replace"))
        line, column = _line_column(prefix)
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


def marked_problem(path: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    parts = [p for p in (exc.context, exc.problem) if p]
    return Problem(path, line, column, "YAML syntax error: " + (", ".join(parts) or str(exc)))


def _line_column(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return line, column


# The most a constructed value may weigh (nodes + characters, aliases counted each time they
# are used): a few anchors nested nine deep would otherwise build gigabytes ("billion laughs").
MAX_CONSTRUCTED = 4_000_000


def _constructor_error(node: yaml.Node, problem: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _construct(node: yaml.Node) -> Any:
    # PyYAML's safe constructors raise ValueError and friends for `!!int abc`, `!!float x`,
    # `!!timestamp nope` or 5,000-digit integers: every one becomes a positioned error.
    constructor = _SCALAR_CONSTRUCTOR
    # a failed construction leaves state behind ("recursive node" errors later): start clean
    constructor.constructed_objects = {}
    constructor.recursive_objects = {}
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError, IndexError, KeyError) as exc:
        tag = node.tag.rsplit(":", 1)[-1]
        raise _constructor_error(node, f"not a valid {tag}: {exc}") from None
    except RecursionError:
        raise _constructor_error(node, "the value is nested too deeply") from None


def scalar_value(node: yaml.ScalarNode) -> Any:
    """The Python value of a scalar node under the safe schema (str, int, bool, None...).

    Raises yaml.constructor.ConstructorError (which carries a mark) for unknown tags and for
    values their tag cannot hold.
    """
    return _construct(node)


def weight(node: yaml.Node, limit: int = MAX_CONSTRUCTED) -> int:
    """Nodes plus scalar characters of the value ``node`` constructs, aliases expanded.

    Computed once per node (linear in the document even for alias bombs); raises a
    positioned ConstructorError when over ``limit`` or recursive.
    """
    done: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, expanded = stack.pop()
        key = id(current)
        if key in done:
            continue
        children: list[yaml.Node] = []
        if isinstance(current, yaml.MappingNode):
            children = [n for pair in current.value for n in pair]
        elif isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        if not expanded:
            if key in active:
                raise _constructor_error(current, "a recursive alias cannot be used here")
            active.add(key)
            stack.append((current, True))
            stack.extend((child, False) for child in children if id(child) not in done)
            continue
        active.discard(key)
        own = len(current.value) if isinstance(current, yaml.ScalarNode) else 1
        total = own + sum(done.get(id(child), 0) for child in children)
        if total > limit:
            raise _constructor_error(current, f"the value is too large ({total:,} nodes and "
                                              f"characters once aliases are expanded; at most "
                                              f"{limit:,})")
        done[key] = total
    return done[id(node)]


def construct(node: yaml.Node) -> Any:
    """Plain Python data (dicts, lists, scalars) for a subtree, under the safe schema.

    Refuses (positioned) a value that aliases would blow up beyond MAX_CONSTRUCTED.
    """
    weight(node)
    return _construct(node)


def mapping_items(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """The (key, value) pairs of a mapping with ``<<`` merge keys applied.

    A bad merge (``<<: 5``) raises a ConstructorError at the mapping.
    """
    if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        flat = yaml.MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark)
        try:
            _SCALAR_CONSTRUCTOR.flatten_mapping(flat)
        except yaml.MarkedYAMLError:
            raise
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise _constructor_error(node, f"bad merge key: {exc}") from None
        return list(flat.value)
    return list(node.value)


def duplicate_keys(node: yaml.MappingNode) -> list[yaml.ScalarNode]:
    """The key nodes written a second time in ``node`` itself (merged keys do not count)."""
    seen: set[object] = set()
    out = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            out.append(key)
        seen.add(ident)
    return out


def walk(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node below ``node`` in document order: each collection once (aliases are not
    followed twice: no loops, no blow-up), and each scalar where it is used."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.ScalarNode):
            yield current  # most nodes: no children, so not worth remembering
            continue
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, yaml.MappingNode):
            for key, value in reversed(current.value):
                stack.extend((value, key))
        else:
            stack.extend(reversed(current.value))
