"""Two images with one ref (after normalisation): the second import would replace the first."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext
from kiln.model import Image

ID = "duplicate-ref"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    seen: dict[str, Image] = {}
    for image in ctx.images:
        key = str(refs.normalize(image.ref))
        first = seen.setdefault(key, image)
        if first is not image:
            yield Hit(image.ref_at, f"{image.ref!r} is also the ref of image {first.name!r} "
                                    f"(line {first.ref_at.line})")
