"""A chart image string that is not an image reference at all (``registry//x``, upper case,
a doubled registry slash from a trailing ``/`` in a registry value): kubelet fails the pod
with InvalidImageName, and no node cache can help."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext

ID = "chart-invalid-ref"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for found in ctx.chart_refs:
        if found.indirect:
            continue  # an argument or variable may hold something else entirely
        try:
            refs.normalize(found.text)
        except refs.ReferenceError as exc:
            yield Hit(found.at, f"{found.text!r} is not an image reference ({exc}): kubelet "
                                "would fail the pod with InvalidImageName", found)
