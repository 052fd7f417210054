"""nodes.yaml, the inventory of PXE nodes: ``nodes: [{hostname: cp-1, roles: [...]}, ...]``.

A host name becomes a folder name and a cloud-init meta-data value; a role selects what the
node imports: both pass a whole-string grammar, every problem is reported at file:line:col.
Read with the same positioned reader as images.yaml (kiln/schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kiln import grammar
from kiln.errors import ConfigError, Problem
from kiln.schema import NodeReader
from kiln.yamlio import compose_file, position


@dataclass(frozen=True)
class Node:
    hostname: str
    roles: tuple[str, ...]  # empty: every image
    line: int = field(default=0, compare=False)  # where the inventory names it
    column: int = field(default=0, compare=False)
    platform: str | None = None  # its data lists only this platform's images (None: all)


class _InventoryReader(NodeReader):
    def nodes(self, top: yaml.Node) -> list[Node]:
        fields = self.mapping(top, "inventory", ("nodes",),
                              unknown=" (an inventory has only 'nodes')")
        if fields is None or "nodes" not in fields:
            if fields is not None:
                self.problems.append(Problem(self.path, 1, 1, "missing 'nodes' list"))
            return []
        seq = fields["nodes"][1]
        if not isinstance(seq, yaml.SequenceNode):
            self.error(seq, "'nodes' must be a list")
            return []
        seen: dict[str, int] = {}
        return [n for n in (self.node(item, seen) for item in seq.value) if n is not None]

    def node(self, item: yaml.Node, seen: dict[str, int]) -> Node | None:
        if not isinstance(item, yaml.MappingNode):
            self.error(item, "each node must be a mapping with hostname and roles")
            return None
        fields = self.mapping(item, "node", ("hostname", "roles", "platform"), unknown="")
        if fields is None:
            return None
        if "hostname" not in fields:
            self.error(item, "node: missing hostname")
            return None
        hostname = self.hostname(fields["hostname"][1], seen)
        if hostname is None:
            return None
        roles: tuple[str, ...] = ()
        if "roles" in fields:
            rnode = fields["roles"][1]
            count = len(self.problems)
            roles = tuple(sorted(set(self.roles(rnode))))
            if len(self.problems) > count:
                return None
        platform = None
        if "platform" in fields:
            platform = self.checked(fields["platform"][1], "platform", grammar.PLATFORM,
                                    "os/arch[/variant]")
            if platform is None:
                return None
        line, column = position(item)
        return Node(hostname, roles, line, column, platform)

    def hostname(self, hnode: yaml.Node, seen: dict[str, int]) -> str | None:
        hostname = self.string(hnode, "hostname")
        if hostname is None:
            return None
        if len(hostname) > grammar.HOSTNAME_MAX:
            self.error(hnode, f"hostname {hostname[:40]!r}... is {len(hostname)} characters: "
                              f"a host name has at most {grammar.HOSTNAME_MAX}")
            return None
        if not grammar.matches(grammar.HOSTNAME, hostname):
            self.error(hnode, f"hostname {hostname!r} is not a lowercase RFC 1123 host name")
            return None
        if hostname in seen:
            self.error(hnode, f"hostname {hostname!r} is already used (line {seen[hostname]})")
            return None
        seen[hostname] = position(hnode)[0]
        return hostname


def load_inventory(path: Path, display: str | None = None) -> list[Node]:
    """Every node of the inventory at ``path``; ConfigError lists every problem."""
    shown = display or str(path)
    docs = compose_file(path, shown, fast=True)
    if len(docs) != 1 or not isinstance(docs[0], yaml.MappingNode):
        raise ConfigError([Problem(shown, 1, 1, "an inventory is a mapping with a 'nodes' list")])
    reader = _InventoryReader(shown, path.parent)
    nodes = reader.nodes(docs[0])
    if reader.problems:
        raise ConfigError(reader.problems)
    return nodes
