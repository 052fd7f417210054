"""A ref containerd would rewrite: the name in its cache would not be the name in images.yaml."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext

ID = "not-fully-qualified"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        if not refs.is_fully_qualified(image.ref):
            stored = refs.normalize(image.ref)
            yield Hit(image.ref_at, f"{image.ref!r} is stored by containerd as '{stored}'; "
                                    "write the full name with registry and tag")
