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

from kiln.lint.charts import display_path
from kiln.model import Location
from kiln.yamlio import compose_file, mapping_items, position

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
    folder: Path
    values: Value
    app_version: str = ""
    subcharts: list[Chart] = field(default_factory=list)


def tree(node: yaml.Node, path: str, override: bool) -> Value:
    """A Value tree of a composed node (``<<`` merge keys applied)."""
    if not isinstance(node, yaml.MappingNode):
        return Value(node, path, override)
    children = {}
    for key, value in mapping_items(node):
        if isinstance(key, yaml.ScalarNode):
            children[str(key.value)] = tree(value, path, override)
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


def _file_tree(path: Path, override: bool) -> Value | None:
    if not path.is_file():
        return None
    merged: Value | None = None
    shown = display_path(path)
    for document in compose_file(path, shown, fast=True):
        if isinstance(document, yaml.MappingNode):
            merged = coalesce(merged, tree(document, shown, override))
    return merged


def _chart_yaml(folder: Path) -> dict[str, str]:
    out = {}
    for document in compose_file(folder / "Chart.yaml", display_path(folder / "Chart.yaml"),
                                 fast=True):
        if isinstance(document, yaml.MappingNode):
            for key, value in mapping_items(document):
                if isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode):
                    out[str(key.value)] = str(value.value)
    return out


def load_chart(folder: Path, overrides: list[Value], globals_: Value | None = None) -> Chart:
    """``folder``'s effective values under ``overrides`` (in order), subcharts included."""
    meta = _chart_yaml(folder)
    values = _file_tree(folder / "values.yaml", override=False)
    for top in overrides:
        values = coalesce(values, top)
    if values is None or values.children is None:
        values = Value(yaml.MappingNode("tag:yaml.org,2002:map", []), str(folder), False, {})
    children = dict(values.children or {})
    if globals_ is not None:
        children["global"] = coalesce(children.get("global"), globals_)
    values = Value(values.node, values.path, values.override, children)
    chart = Chart(meta.get("name", folder.name), folder, _drop_nulls(values),
                  meta.get("appVersion", "").strip())
    for sub in sorted((folder / "charts").glob("*/Chart.yaml")):
        scoped = children.get(sub.parent.name)
        chart.subcharts.append(load_chart(
            sub.parent, [scoped] if scoped is not None and scoped.children is not None else [],
            children.get("global")))
    return chart


def load_release(folder: Path, value_files: list[Path]) -> Chart:
    """A chart folder with the user's values files applied, as ``helm -f a -f b`` would."""
    overrides = [t for t in (_file_tree(p, override=True) for p in value_files) if t is not None]
    return load_chart(folder, overrides)
