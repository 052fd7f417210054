"""cloud-init documents, produced by a YAML serializer and read back before they are written.

No value is ever pasted into YAML text: the document is a Python structure, dumped by PyYAML's
safe serializer (multi-line strings as literal blocks where YAML allows it, UTF-8 kept as
UTF-8), then parsed again; kiln writes it only if it reads back equal to what was built and
its top-level keys are exactly the ones the caller put there.
"""

from __future__ import annotations

from typing import Any

import yaml

from kiln.errors import KilnError

HEADER = "#cloud-config\n"


class SerializeError(KilnError):
    """A document that would not read back as built (a kiln bug, or a value to refuse)."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper: literal blocks for multi-line text, no aliases, keys in insertion order."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # A literal block where the emitter allows one (it falls back to a quoted scalar when the
    # text has characters or trailing spaces a block cannot carry).
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict[str, Any], comments: tuple[str, ...] = (), header: str = HEADER) -> str:
    """``header`` + fixed ``comments`` + the YAML of ``document``, checked by reading it back.

    ``comments`` are kiln's own fixed sentences: they must not carry data (one line each).
    """
    for comment in comments:
        if "\n" in comment or "\r" in comment or not comment.isascii():
            raise SerializeError(f"a comment must be one ASCII line: {comment!r}")
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=1 << 16)
    text = header + "".join(f"# {c}\n" for c in comments) + body
    check(text, document)
    return text


def check(text: str, document: dict[str, Any]) -> None:
    """Raise SerializeError unless ``text`` parses to exactly ``document``."""
    try:
        back = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SerializeError(f"generated YAML does not parse: {exc}") from None
    if not isinstance(back, dict) or list(back) != list(document):
        keys = list(back) if isinstance(back, dict) else type(back).__name__
        raise SerializeError(f"generated YAML has top-level keys {keys}, "
                             f"expected {list(document)}")
    if back != document:
        raise SerializeError("generated YAML does not read back as built")
