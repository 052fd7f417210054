"""nodes.yaml, the inventory of PXE nodes: ``nodes: [{hostname: cp-1, roles: [...]}, ...]``.

A host name becomes a folder name and a cloud-init meta-data value; a role selects what the
node imports: both pass a whole-string grammar, every problem is reported at file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln import grammar
from kiln.errors import ConfigError, Problem
from kiln.yamlio import compose_file, duplicate_keys, mapping_items, position, scalar_value


@dataclass(frozen=True)
class Node:
    hostname: str
    roles: tuple[str, ...]  # empty: every image


class _InventoryReader:
    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.problems: list[Problem] = []

    def problem(self, node: yaml.Node, message: str) -> None:
        line, column = position(node)
        self.problems.append(Problem(self.shown, line, column, message))

    def fields(self, node: yaml.MappingNode, what: str, allowed: tuple[str, ...]
               ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        try:
            items = mapping_items(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problems.append(Problem(self.shown, mark.line + 1, mark.column + 1,
                                         f"{what}{exc.problem}"))
            return None
        for again in duplicate_keys(node):
            self.problem(again, f"{what}duplicate key {again.value!r}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in items:
            if not isinstance(key, yaml.ScalarNode) or key.value not in allowed:
                shown = key.value if isinstance(key, yaml.ScalarNode) else "?"
                hint = "" if what else " (an inventory has only 'nodes')"
                self.problem(key, f"{what}unknown key {shown!r}{hint}")
                continue
            out.setdefault(key.value, (key, value))
        return out

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{what} must be a string")
            return None
        try:
            value = scalar_value(node)
        except yaml.MarkedYAMLError as exc:
            self.problem(node, str(exc.problem))
            return None
        if not isinstance(value, str):
            self.problem(node, f"{what} must be a string")
            return None
        return value

    def node(self, item: yaml.Node, seen: dict[str, int]) -> Node | None:
        if not isinstance(item, yaml.MappingNode):
            self.problem(item, "each node must be a mapping with hostname and roles")
            return None
        fields = self.fields(item, "node: ", ("hostname", "roles"))
        if fields is None:
            return None
        if "hostname" not in fields:
            self.problem(item, "node: missing hostname")
            return None
        hnode = fields["hostname"][1]
        hostname = self.string(hnode, "hostname")
        if hostname is None:
            return None
        if len(hostname) > grammar.HOSTNAME_MAX:
            self.problem(hnode, f"hostname {hostname[:40]!r}... is {len(hostname)} characters: "
                                f"a host name has at most {grammar.HOSTNAME_MAX}")
            return None
        if not grammar.matches(grammar.HOSTNAME, hostname):
            self.problem(hnode, f"hostname {hostname!r} is not a lowercase RFC 1123 host name")
            return None
        if hostname in seen:
            self.problem(hnode, f"hostname {hostname!r} is already used (line {seen[hostname]})")
            return None
        seen[hostname] = position(hnode)[0]
        roles: set[str] = set()
        if "roles" in fields:
            rnode = fields["roles"][1]
            if not isinstance(rnode, yaml.SequenceNode):
                self.problem(rnode, "roles must be a list of strings")
                return None
            for r in rnode.value:
                role = self.string(r, "each role")
                if role is not None and not grammar.matches(grammar.ROLE, role):
                    self.problem(r, f"role {role!r} must match {grammar.ROLE.pattern}")
                    role = None
                if role is None:
                    return None
                roles.add(role)
        return Node(hostname, tuple(sorted(roles)))


def load_inventory(path: Path, display: str | None = None) -> list[Node]:
    """Every node of the inventory at ``path``; ConfigError lists every problem."""
    shown = display or str(path)
    reader = _InventoryReader(shown)
    docs = compose_file(path, shown, fast=True)
    if len(docs) != 1 or not isinstance(docs[0], yaml.MappingNode):
        raise ConfigError([Problem(shown, 1, 1, "an inventory is a mapping with a 'nodes' list")])
    top = reader.fields(docs[0], "", ("nodes",))
    seq = (top or {}).get("nodes", (None, None))[1]
    if not isinstance(seq, yaml.SequenceNode):
        if top is not None and "nodes" in top:
            reader.problem(top["nodes"][1], "'nodes' must be a list")
        else:
            reader.problems.append(Problem(shown, 1, 1, "missing 'nodes' list"))
        raise ConfigError(reader.problems)
    seen: dict[str, int] = {}
    nodes = [n for n in (reader.node(item, seen) for item in seq.value) if n is not None]
    if reader.problems:
        raise ConfigError(reader.problems)
    return nodes
