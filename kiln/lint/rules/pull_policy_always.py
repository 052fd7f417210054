"""imagePullPolicy Always on a bootstrap image: kubelet would pull before the registry exists."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext

ID = "pull-policy-always"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for found in ctx.chart_refs:
        if found.pull_policy != "Always" or found.pull_policy_at is None:
            continue
        match = classify(found.text, ctx.images, ctx.env.registry)
        if match.kind in ("declared", "mismatch") and match.image is not None:
            yield Hit(found.pull_policy_at,
                      f"imagePullPolicy Always on {found.text!r} (bootstrap image "
                      f"{match.image.name!r}): use IfNotPresent so kubelet takes the "
                      "side-loaded copy", found)
