"""Argo CD ``Application`` / ``ApplicationSet`` manifests: the values Argo CD gives Helm.

An Application's Helm source carries its values four ways, applied in Argo CD's order (later
wins): ``helm.valueFiles`` (paths in the repository, relative to the source's ``path``, or
``$ref/…`` from a ``ref:`` source), ``helm.values`` (a YAML string), ``helm.valuesObject``,
``helm.parameters`` (``--set`` style). They are coalesced over the chart's defaults when the
chart is in the repository (``path`` with a Chart.yaml), else judged on their own. Positions
inside the ``values`` string are mapped back to the manifest's lines (exact for a literal
block scalar ``values: |``; other styles point at the string).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from kiln.errors import ConfigError, Problem
from kiln.lint.charts import Application, ChartRef
from kiln.lint.conventions import Unresolved, image_refs
from kiln.lint.values import Chart, Value, coalesce, file_tree, load_release, tree
from kiln.model import Location
from kiln.yamlio import compose_documents, position

_MAP = "tag:yaml.org,2002:map"


def refs(manifests: list[Application], root: Path) -> Iterator[ChartRef | Unresolved]:
    """The images every Helm source of ``manifests`` deploys, with where each was set."""
    for manifest in manifests:
        spec = _fields(_fields(manifest.node).get("spec"))
        if _text(_fields(manifest.node).get("kind")) == "ApplicationSet":
            spec = _fields(_fields(spec.get("template")).get("spec"))
        sources = [spec["source"]] if "source" in spec else []
        listed = spec.get("sources")
        if isinstance(listed, yaml.SequenceNode):
            sources += listed.value
        named = {_text(_fields(s).get("ref")): _fields(s) for s in sources}
        for source in sources:
            yield from _source(_fields(source), named, manifest, root)


def _source(source: dict[str, yaml.Node], named: dict[str, dict[str, yaml.Node]],
            manifest: Application, root: Path) -> Iterator[ChartRef | Unresolved]:
    helm = _fields(source.get("helm"))
    if not helm:
        return
    base = _inside(root, root / _text(source.get("path")))
    overrides: list[Value] = []
    files = helm.get("valueFiles")
    for item in files.value if isinstance(files, yaml.SequenceNode) else []:
        found = _value_file(_text(item), base, named, root) if base is not None else None
        if found is None or not found.is_file():
            if _text(helm.get("ignoreMissingValueFiles")).lower() != "true":
                yield Unresolved(_at(manifest, item), f"valueFiles {_text(item)!r} is not in "
                                                      "this repository: its images are not checked")
            continue
        value = file_tree(found, override=True)
        if value is not None:
            overrides.append(value)
    has_object = isinstance(helm.get("valuesObject"), yaml.MappingNode)
    if "values" in helm and has_object:
        yield Unresolved(_at(manifest, helm["values"]), "helm.values is ignored: Argo CD hands "
                         "Helm valuesObject when both are set")
    elif isinstance(helm.get("values"), yaml.MappingNode):
        yield Unresolved(_at(manifest, helm["values"]), "helm.values is a mapping; Argo CD "
                         "takes a string there (valuesObject takes a mapping): its images are "
                         "not checked")
    elif "values" in helm:
        try:
            overrides.extend(_embedded(helm["values"], manifest))
        except ConfigError:
            if "{{" not in str(helm["values"].value):
                raise
            yield Unresolved(_at(manifest, helm["values"]), "helm.values is a template that is "
                             "not YAML until Argo CD renders it: its images are not checked")
    if has_object:
        overrides.append(tree(helm["valuesObject"], manifest.shown, True))
    overrides.extend(_parameters(helm.get("parameters"), manifest))
    if base is not None and (base / "Chart.yaml").is_file() and _text(source.get("path")):
        chart = load_release(base, [], overrides)
    else:  # a chart from a Helm repository: what the Application sets is all there is
        merged: Value | None = None
        for top in overrides:
            merged = coalesce(merged, top)
        if merged is None or merged.children is None:
            return
        chart = Chart(_text(source.get("chart")), manifest.shown, merged)
    yield from image_refs(chart)


def _value_file(name: str, base: Path, named: dict[str, dict[str, yaml.Node]], root: Path
                ) -> Path | None:
    if not name or "://" in name:
        return None
    if name.startswith("/"):  # Argo CD: relative to the repository's root
        return _inside(root, root / name.lstrip("/"))
    if name.startswith("$"):
        ref, _, rest = name[1:].partition("/")
        return _inside(root, root / rest) if ref in named else None
    return _inside(root, base / name)


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` if it stays inside the repository ``root`` (after ``..`` and symlinks), else
    None: lint reads only the repository it was given, never a path a manifest points out of
    it (``../../etc``, a symlink to elsewhere)."""
    try:
        found = path.resolve()
        return found if found.is_relative_to(root.resolve()) else None
    except (OSError, RuntimeError, ValueError):
        return None


def _embedded(node: yaml.Node, manifest: Application) -> list[Value]:
    """The ``helm.values`` string as values, its positions moved onto the manifest's lines."""
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        return []
    line, column = _content_origin(node, manifest.path)
    try:
        documents = compose_documents(str(node.value), manifest.shown, fast=True)
    except ConfigError as exc:
        raise ConfigError([Problem(p.path, p.line + line, p.column + column, p.message)
                           for p in exc.problems]) from None
    out = []
    for document in documents:
        _shift(document, line, column)
        if isinstance(document, yaml.MappingNode):
            out.append(tree(document, manifest.shown, True))
    return out


def _content_origin(node: yaml.ScalarNode, path: Path) -> tuple[int, int]:
    """(lines, columns) to add to a position inside the string to land in the file."""
    line, column = position(node)
    if node.style != "|":
        return line - 1, column - 1  # folded, quoted or plain: roughly where it starts
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return line - 1, column - 1
    for text in lines[line:]:
        if text.strip():
            return line, len(text) - len(text.lstrip(" "))
    return line, 0


def _shift(root: yaml.Node, lines: int, columns: int) -> None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        mark = node.start_mark
        node.start_mark = yaml.Mark(mark.name, mark.index, mark.line + lines,
                                    mark.column + columns, None, 0)
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _parameters(node: yaml.Node | None, manifest: Application) -> Iterator[Value]:
    """``parameters: [{name: image.tag, value: v2}]`` as values (``\\.`` escapes a dot)."""
    for item in node.value if isinstance(node, yaml.SequenceNode) else []:
        fields = _fields(item)
        name, value = _text(fields.get("name")), fields.get("value")
        if not name or not isinstance(value, yaml.ScalarNode) or "[" in name:
            continue
        keys = [k.replace("\0", ".") for k in name.replace("\\.", "\0").split(".")]
        built = Value(value, manifest.shown, True)
        for key in reversed(keys):
            built = Value(yaml.MappingNode(_MAP, [], value.start_mark), manifest.shown, True,
                          {key: built})
        yield built


def _fields(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _text(node: yaml.Node | None) -> str:
    return str(node.value).strip() if isinstance(node, yaml.ScalarNode) else ""


def _at(manifest: Application, node: yaml.Node) -> Location:
    return Location(manifest.shown, *position(node))
