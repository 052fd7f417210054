"""The values Helm would use for a chart: defaults coalesced with the user's overrides.

Helm's rules: mappings merge key by key, an override wins, ``null`` deletes a key.  A
subchart (``charts/<name>/`` with its own values.yaml) gets the parent's ``<name>:`` values
over its own defaults, and ``global`` passed down.  Every value keeps its YAML node and the
file it came from, so a finding can point at the line that set it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kiln.errors import ConfigError, Problem
from kiln.lint.chartfiles import ChartFiles, from_folder
from kiln.lint.charts import display_path
from kiln.model import Location
from kiln.yamlio import compose_documents, mapping_items, marked_problem, position, weight

NULL_TAG = "tag:yaml.org,2002:null"


@dataclass
class Value:
    """One effective value: a mapping (``children``) or a leaf node, and where it was set."""

    node: yaml.Node
    path: str
    override: bool  # set by a user's values file, not a chart default
    children: dict[str, Value] | None = None

    @property
    def at(self) -> Location:
        line, column = position(self.node)
        return Location(self.path, line, column)

    def text(self) -> str:
        """The scalar text of a leaf ("" for a mapping, a list or null)."""
        node = self.node
        if self.children is None and isinstance(node, yaml.ScalarNode) and node.tag != NULL_TAG:
            return str(node.value).strip()
        return ""


@dataclass
class Chart:
    """A chart with its effective values and its subcharts'."""

    name: str
    shown: str  # the chart's folder (or packaged chart) as findings name it
    values: Value
    app_version: str = ""
    subcharts: list[Chart] = field(default_factory=list)  # enabled ones
    scopes: set[str] = field(default_factory=set)  # values keys that belong to subcharts
    missing: list[Dependency] = field(default_factory=list)  # listed, not under charts/
    declared_globals: frozenset[str] = frozenset()  # global.* keys its own defaults have


MAX_DEPTH = 64  # of nested mappings in a values file; real charts use fewer than 15


def tree(node: yaml.Node, path: str, override: bool, depth: int = 0,
         aliases: bool = True) -> Value:
    """A Value tree of a composed node (``<<`` merge keys applied).

    Raises ConfigError for a document that aliases would blow up, a bad merge key, or
    mappings nested deeper than MAX_DEPTH. ``aliases=False``: the text has no anchor, so
    nothing can blow up and the weighing is skipped."""
    if depth == 0:
        try:
            if aliases:
                weight(node)
            return tree(node, path, override, 1)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([marked_problem(path, exc)]) from None
    if not isinstance(node, yaml.MappingNode):
        return Value(node, path, override)
    if depth > MAX_DEPTH:
        line, column = position(node)
        raise ConfigError([Problem(path, line, column,
                                   f"mappings nested more than {MAX_DEPTH} deep")])
    children = {}
    for key, value in mapping_items(node):
        if isinstance(key, yaml.ScalarNode):
            children[str(key.value)] = tree(value, path, override, depth + 1)
    return Value(node, path, override, children)


def coalesce(base: Value | None, top: Value) -> Value:
    """``top`` over ``base``: mappings merged recursively, ``null`` in ``top`` deletes.

    Nulls with nothing under them are kept (a later, deeper scope may need them); ``Chart``
    values have them dropped once every layer is applied."""
    if base is None or base.children is None or top.children is None:
        return top
    merged = dict(base.children)
    for key, value in top.children.items():
        if _is_null(value):
            merged.pop(key, None)
        else:
            merged[key] = coalesce(merged.get(key), value)
    return Value(top.node, top.path, top.override, merged)


def _is_null(value: Value) -> bool:
    return isinstance(value.node, yaml.ScalarNode) and value.node.tag == NULL_TAG


def _drop_nulls(value: Value) -> Value:
    if value.children is None:
        return value
    kept = {k: _drop_nulls(v) for k, v in value.children.items() if not _is_null(v)}
    return Value(value.node, value.path, value.override, kept)


def _document_tree(data: bytes | None, shown: str, override: bool) -> Value | None:
    merged: Value | None = None
    anchors = b"&" in (data or b"")  # no anchor, no alias: nothing to weigh
    for document in compose_documents(data or b"", shown, fast=True):
        if isinstance(document, yaml.MappingNode):
            merged = coalesce(merged, tree(document, shown, override, aliases=anchors))
    return merged


def file_tree(path: Path, override: bool) -> Value | None:
    if not path.is_file():
        return None
    shown = display_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(shown, 1, 1, f"cannot read: {exc.strerror or exc}")]) from None
    return _document_tree(data, shown, override)


@dataclass(frozen=True)
class Dependency:
    """One ``dependencies:`` entry of a Chart.yaml."""

    name: str
    alias: str
    condition: str
    tags: tuple[str, ...]
    at: Location


@dataclass(frozen=True)
class Meta:
    name: str
    app_version: str
    dependencies: tuple[Dependency, ...]


def _scalars(node: yaml.Node) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v for k, v in mapping_items(node) if isinstance(k, yaml.ScalarNode)}


def _string(node: yaml.Node | None) -> str:
    return str(node.value).strip() if isinstance(node, yaml.ScalarNode) else ""


def _chart_meta(files: ChartFiles, fallback: str) -> Meta:
    fields: dict[str, yaml.Node] = {}
    for document in compose_documents(files.read("Chart.yaml") or b"",
                                      files.display("Chart.yaml"), fast=True):
        fields.update(_scalars(document))
    dependencies = []
    listed = fields.get("dependencies")
    for item in listed.value if isinstance(listed, yaml.SequenceNode) else []:
        entry = _scalars(item)
        if not _string(entry.get("name")):
            continue  # helm refuses such a chart; nothing to scope
        tags = entry.get("tags")
        dependencies.append(Dependency(
            _string(entry.get("name")), _string(entry.get("alias")),
            _string(entry.get("condition")),
            tuple(_string(t) for t in tags.value) if isinstance(tags, yaml.SequenceNode) else (),
            Location(files.display("Chart.yaml"), *position(item))))
    return Meta(_string(fields.get("name")) or fallback, _string(fields.get("appVersion")),
                tuple(dependencies))


def _enabled(dependency: Dependency, values: Value, tags: Value | None) -> bool:
    """Helm's rule: the first condition path holding a boolean decides; else, when every
    tag the dependency lists that is set is false, it is off."""
    for path in filter(None, (p.strip() for p in dependency.condition.split(","))):
        found: Value | None = values
        for key in path.split("."):
            found = found.children.get(key) if found and found.children is not None else None
        flag = boolean(found)
        if flag is not None:
            return flag
    flags = [boolean(tags.children.get(t) if tags and tags.children else None)
             for t in dependency.tags]
    return not (False in flags and True not in flags)


def boolean(value: Value | None) -> bool | None:
    """A YAML boolean's value; None for anything else (absent, a string, a map)."""
    if value is None or not isinstance(value.node, yaml.ScalarNode):
        return None
    if value.node.tag != "tag:yaml.org,2002:bool":
        return None
    return str(value.node.value).lower() in ("true", "yes", "on", "y")


def load_chart(files: ChartFiles, overrides: list[Value], globals_: Value | None = None,
               tags: Value | None = None) -> Chart:
    """The chart's effective values under ``overrides`` (in order), subcharts included."""
    meta = _chart_meta(files, files.shown.rsplit("/", 1)[-1])
    values = _document_tree(files.read("values.yaml"), files.display("values.yaml"), False)
    declared = _global_keys(values)
    for top in overrides:
        values = coalesce(values, top)
    if values is None or values.children is None:
        values = Value(yaml.MappingNode("tag:yaml.org,2002:map", []), files.shown, False, {})
    children = dict(values.children or {})
    if globals_ is not None:
        children["global"] = coalesce(children.get("global"), globals_)
    values = _drop_nulls(Value(values.node, values.path, values.override, children))
    if tags is None:
        tags = children.get("tags")  # the top chart's: Helm reads tags there only
    chart = Chart(meta.name, files.shown, values, meta.app_version, declared_globals=declared)
    for sub in files.subcharts():
        sub_name = _chart_meta(sub, sub.shown.rsplit("/", 1)[-1]).name
        listed = [d for d in meta.dependencies if d.name == sub_name] or [
            Dependency(sub_name, "", "", (), Location(sub.shown, 1, 1))]  # put there by hand
        for dependency in listed:
            scope = dependency.alias or dependency.name
            chart.scopes.add(scope)
            if not _enabled(dependency, values, tags):
                continue
            scoped = children.get(scope)
            chart.subcharts.append(load_chart(
                sub, [scoped] if scoped is not None and scoped.children is not None else [],
                children.get("global"), tags))
    for dependency in meta.dependencies:
        if (dependency.alias or dependency.name) in chart.scopes:
            continue
        # not vendored: its values are its own, never the parent's images; said when on
        chart.scopes.add(dependency.alias or dependency.name)
        if _enabled(dependency, values, tags):
            chart.missing.append(dependency)
    return chart


def _global_keys(defaults: Value | None) -> frozenset[str]:
    """``imageRegistry``, ``image.registry``…: the globals a chart's own values.yaml sets."""
    top = defaults.children.get("global") if defaults and defaults.children else None
    keys: set[str] = set()
    for key, value in (top.children or {}).items() if top is not None else ():
        keys.add(key)
        keys.update(f"{key}.{inner}" for inner in (value.children or {}))
    return frozenset(keys)


def load_release(folder: Path, value_files: list[Path], more: list[Value] | None = None
                 ) -> Chart:
    """A chart folder with the user's values files applied, as ``helm -f a -f b`` would,
    then ``more`` (values set another way, e.g. by an Argo CD Application)."""
    overrides = [t for t in (file_tree(p, override=True) for p in value_files) if t is not None]
    return load_chart(from_folder(folder, display_path(folder)), overrides + (more or []))
