"""A positioned reader for YAML node trees: the primitives images.yaml and the inventory
share. Every problem is recorded with the line and column of the node that caused it; the
reader goes on, so one run reports all of them.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from kiln import der, grammar
from kiln.errors import Problem
from kiln.model import Keyless, Location, Verify, did_you_mean
from kiln.yamlio import construct, mapping_items, position, scalar_value

REMOVED_KEYS = {  # keys older kilns read: say why, not "did you mean"
    "bundles": " (bundles were removed: each image is stored as its own object; delete the key)",
}


MAP_TAG = "tag:yaml.org,2002:map"
VERIFY_KEYS = ("key", "identity", "identity_regexp", "issuer", "issuer_regexp", "roots",
               "rekor_key")
NAME_MAX, PATH_MAX = 255, 4000  # Linux's limits (4096 for a path, with room for what kiln adds)


class NotScalarType:
    pass


NotScalar = NotScalarType()


class NodeReader:
    """Reads typed values out of YAML nodes and records a positioned problem for each wrong one."""

    def __init__(self, path: str, root: Path) -> None:
        self.path = path
        self.root = root
        self.problems: list[Problem] = []

    def error(self, node: yaml.Node, message: str) -> None:
        line, column = position(node)
        self.problems.append(Problem(self.path, line, column, message))

    def at(self, node: yaml.Node) -> Location:
        line, column = position(node)
        return Location(self.path, line, column)

    def mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...], required: tuple[str, ...] = (),
        *, unknown: str | None = None,
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """The fields of a mapping node, checked against ``allowed`` and ``required``.

        ``unknown``: what to add to an unknown key's message (default: a "did you mean")."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        if node.tag != MAP_TAG:
            self.error(node, f"{what}: the tag {node.tag!r} is not allowed here (a plain "
                             "mapping is)")
            return None
        try:
            items = mapping_items(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problems.append(
                Problem(self.path, mark.line + 1, mark.column + 1, f"{what}: {exc.problem}")
            )
            return None
        own = {id(key) for key, _ in node.value}
        fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in items:
            name = self.scalar(key)
            if not isinstance(name, str):
                self.error(key, f"{what}: keys must be strings")
                continue
            # A key written here overrides one merged in with `<<`; two written here clash.
            if name in fields and id(fields[name][0]) in own:
                self.error(key, f"{what}: duplicate key {name!r}")
                continue
            if allowed and name not in allowed:
                hint = (REMOVED_KEYS.get(name) or did_you_mean(name, list(allowed))
                        if unknown is None else unknown)
                self.error(key, f"{what}: unknown key {name!r}{hint}")
                continue
            fields[name] = (key, value)
        for name in required:
            if name not in fields:
                self.error(node, f"{what}: missing required key {name!r}")
        return fields

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return NotScalar
        try:
            return scalar_value(node)
        except yaml.MarkedYAMLError as exc:
            self.error(node, f"{exc.problem}")
            return NotScalar

    def string(self, node: yaml.Node, what: str, *, empty: bool = False) -> str | None:
        value = self.scalar(node)
        if value is NotScalar and isinstance(node, yaml.ScalarNode):
            return None  # its tag could not hold it: said already, at the same place
        if not isinstance(value, str):
            self.error(node, f"{what} must be a string")
            return None
        if not empty and not value.strip():
            self.error(node, f"{what} must not be empty")
            return None
        return value

    def integer(self, node: yaml.Node, what: str, low: int, high: int) -> int | None:
        value = self.scalar(node)
        if value is NotScalar and isinstance(node, yaml.ScalarNode):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, f"{what} must be an integer")
            return None
        if not low <= value <= high:
            self.error(node, f"{what} must be between {low} and {high}, not {value}")
            return None
        return value

    def choice(self, node: yaml.Node, what: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(node, what)
        if value is not None and value not in choices:
            self.error(node, f"{what} must be one of {', '.join(choices)}, not {value!r}")
            return None
        return value

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list of strings")
            return []
        out = []
        for item in node.value:
            value = self.string(item, f"each of {what}")
            if value is not None:
                out.append((item, value))
        return out

    def relpath(self, node: yaml.Node, what: str) -> Path | None:
        value = self.string(node, what)
        if value is None:
            return None
        path = self.root / value
        if len(str(path).encode()) > PATH_MAX or any(
                len(part.encode()) > NAME_MAX for part in path.parts):
            self.error(node, f"{what}: the path is too long (a file name has at most "
                             f"{NAME_MAX} bytes, a path {PATH_MAX})")
            return None
        return path

    def input_file(self, node: yaml.Node, what: str) -> Path | None:
        """A path to a file kiln reads (a CA bundle): a regular file, readable now (a FIFO or
        a device would hang or never end the read)."""
        path = self.relpath(node, what)
        if path is None:
            return None
        try:
            info = path.stat()
        except OSError as exc:
            self.error(node, f"{what}: cannot read {path}: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(info.st_mode) or not os.access(path, os.R_OK):
            self.error(node, f"{what}: {path} is not a readable regular file")
            return None
        return path

    def public_key(self, node: yaml.Node, what: str) -> Path | None:
        """A PEM public key file (never a private key: that does not go into images.yaml)."""
        path = self.input_file(node, what)
        if path is None:
            return None
        head = path.read_bytes()[:4096]
        if b"PRIVATE KEY" in head:
            self.error(node, f"{what}: {path} holds a private key; give the public key here "
                             "(openssl pkey -in KEY -pubout) and the private key in "
                             "KILN_SIGNING_KEY where kiln signs")
            return None
        if b"-----BEGIN PUBLIC KEY-----" not in head:
            self.error(node, f"{what}: {path} is not a PEM public key "
                             "(-----BEGIN PUBLIC KEY-----)")
            return None
        return path

    def verify(self, node: yaml.Node) -> Verify | None:
        """``verify: {key: FILE}``; keyless ``verify: {identity (or identity_regexp), issuer
        (or issuer_regexp), roots: FILE, rekor_key: FILE}``; or ``verify: none``."""
        if isinstance(node, yaml.ScalarNode) and node.value == "none":
            return Verify(None, self.at(node))
        fields = self.mapping(node, "verify (a mapping with key, or with identity, issuer, "
                                    "roots and rekor_key; or none)", VERIFY_KEYS)
        if fields is None:
            return None
        if "key" in fields:
            other = next((k for k in fields if k != "key"), None)
            if other is not None:
                self.error(fields[other][0], f"verify: key and {other} do not go together: "
                                             "a public key, or keyless (identity, issuer, "
                                             "roots, rekor_key)")
                return None
            key = self.public_key(fields["key"][1], "verify key")
            return None if key is None else Verify(key, self.at(node))
        if not fields:
            self.error(node, "verify: give key: FILE (the upstream's public key), or keyless "
                             "identity, issuer, roots and rekor_key")
            return None
        keyless = self.keyless(node, fields)
        return None if keyless is None else Verify(None, self.at(node), keyless)

    def keyless(self, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]]
                ) -> Keyless | None:
        """A keyless policy: who (identity, issuer: exact, or a regexp matching the whole
        value) and what to trust (the Fulcio roots, the Rekor key), all required."""
        names: dict[str, tuple[str, bool]] = {}
        for name in ("identity", "issuer"):
            given = [k for k in (name, f"{name}_regexp") if k in fields]
            if len(given) != 1:
                where = fields[given[1]][0] if given else node
                self.error(where, f"verify: give {name} or {name}_regexp"
                                  + (", not both" if given else " (keyless)"))
                continue
            vnode = fields[given[0]][1]
            value = self.string(vnode, f"verify {given[0]}")
            regexp = given[0].endswith("_regexp")
            if value is not None and regexp:
                try:
                    re.compile(value)
                except re.error as exc:
                    self.error(vnode, f"verify {given[0]}: not a regular expression ({exc})")
                    continue
            if value is not None:
                names[name] = (value, regexp)
        for name in ("roots", "rekor_key"):
            if name not in fields:
                self.error(node, f"verify: missing required key {name!r} (keyless: the "
                                 "Fulcio roots and the Rekor public key, copied once)")
        roots = self.roots(fields["roots"][1]) if "roots" in fields else None
        rekor = (self.public_key(fields["rekor_key"][1], "verify rekor_key")
                 if "rekor_key" in fields else None)
        if roots is None or rekor is None or len(names) != 2:
            return None
        return Keyless(identity=names["identity"][0], issuer=names["issuer"][0], roots=roots,
                       rekor_key=rekor, identity_regexp=names["identity"][1],
                       issuer_regexp=names["issuer"][1])

    def roots(self, node: yaml.Node) -> Path | None:
        """A PEM file of certificates with at least one self-signed root."""
        path = self.input_file(node, "verify roots")
        if path is None:
            return None
        try:
            certs = der.from_pem(path.read_bytes()[:1 << 20].decode("ascii"))
        except (UnicodeDecodeError, der.DerError) as exc:
            self.error(node, f"verify roots: {path}: not PEM certificates ({exc})")
            return None
        if not any(c.self_signed for c in certs):
            self.error(node, f"verify roots: {path} holds no self-signed root certificate "
                             "(e.g. the Fulcio root, fulcio_v1.crt.pem)")
            return None
        return path

    def checked(self, node: yaml.Node, what: str, pattern: re.Pattern[str], shape: str,
                *, empty: bool = False) -> str | None:
        """A string that ``pattern`` matches whole (it may reach a node)."""
        value = self.string(node, what, empty=empty)
        if value is not None and not grammar.matches(pattern, value):
            self.error(node, f"{what} {value!r} must match {shape}")
            return None
        return value

    def matching(self, node: yaml.Node, what: str, pattern: re.Pattern[str], shape: str
                 ) -> list[str]:
        """A list of strings, each matching ``pattern`` whole."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what}s must be a list of strings")
            return []
        values = (self.checked(item, what, pattern, shape) for item in node.value)
        return [v for v in values if v is not None]

    def platforms(self, node: yaml.Node) -> tuple[str, ...] | None:
        """A ``platforms:`` list: each ``os/arch[/variant]``, none twice, at least one."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, "platforms must be a list of os/arch[/variant], e.g. "
                             "[linux/amd64, linux/arm64]")
            return None
        out: list[str] = []
        for item in node.value:
            value = self.checked(item, "platform", grammar.PLATFORM, "os/arch[/variant]")
            if value is not None and value in out:
                self.error(item, f"platform {value!r} is listed twice")
            elif value is not None:
                out.append(value)
        return tuple(out) if len(out) == len(node.value) else None

    def roles(self, node: yaml.Node, what: str = "role") -> tuple[str, ...]:
        return tuple(self.matching(node, what, grammar.ROLE, grammar.ROLE.pattern))

    def text_ok(self, node: yaml.Node, what: str, texts: list[str]) -> bool:
        """False (and a problem) when a text holds control characters other than tab/newline."""
        for text in texts:
            bad = grammar.control_characters(text)
            if bad:
                self.error(node, f"{what} holds the control character {bad[0]!r}")
                return False
        return True

    def plain(self, node: yaml.Node) -> Any:
        try:
            return construct(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problems.append(Problem(self.path, mark.line + 1, mark.column + 1,
                                         str(exc.problem)))
            return None
