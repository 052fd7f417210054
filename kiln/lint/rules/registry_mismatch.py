"""A ref outside the environment's registry: on day 2 kubelet would pull it from elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext

ID = "registry-mismatch"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        domain = refs.normalize(image.ref).domain
        if domain != ctx.env.registry:
            yield Hit(image.ref_at, f"{image.ref!r} is on registry {domain!r}, not on the "
                                    f"{ctx.env.name} registry {ctx.env.registry!r}")
