"""Two images with one name: file names, logs and the lock would mix them up."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.context import Hit, LintContext
from kiln.model import Image

ID = "duplicate-name"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    seen: dict[str, Image] = {}
    for image in ctx.images:
        first = seen.setdefault(image.name, image)
        if first is not image:
            yield Hit(image.name_at, f"image name {image.name!r} is already used "
                                     f"(line {first.name_at.line})")
