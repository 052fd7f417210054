"""A tag that can move: the node's cache and the registry can disagree on what it means."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext

ID = "mutable-tag"
LEVEL = "error"


def mutable_reason(text: str, mutable_tags: tuple[str, ...]) -> str | None:
    """Why ``text`` names a mutable image, or None when it is immutable enough."""
    ref = refs.parse(text)
    if ref.tag is None:
        return None if ref.digest else "has no tag: containerd and kubelet read it as ':latest'"
    if ref.tag.lower() in {t.lower() for t in mutable_tags}:
        return f"tag {ref.tag!r} is mutable: use a version tag that never moves"
    return None


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        reason = mutable_reason(image.ref, ctx.env.lint.mutable_tags)
        if reason:
            yield Hit(image.ref_at, f"{image.ref!r} {reason}")
