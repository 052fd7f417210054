"""A chart pins a digest (``ref@sha256:…``, ``repo@sha256:…``) that is not the lock's: nodes
hold ``repo@sha256:<the lock's digest>`` only, so kubelet would miss the cache and pull.
Checked when a lock is given (`lint --lock`)."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext
from kiln.lock import node_digests

ID = "chart-digest-mismatch"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    if ctx.lock is None:
        return
    for found in ctx.chart_refs:
        try:
            digest = refs.parse(found.text).digest
        except refs.ReferenceError:
            continue
        match = classify(found.text, ctx.images, ctx.env.registry)
        if digest is None or match.kind != "declared" or match.image is None:
            continue
        locked = ctx.lock.image(match.image.name)
        if locked is None or locked.ref != match.image.ref:
            continue  # not baked under this ref yet: nothing to compare with
        held = node_digests(locked)
        if digest not in held:
            yield Hit(found.digest_at or found.at,
                      f"{found.text!r} pins {digest}, but nodes hold {match.image.ref!r} as "
                      f"{', '.join(held) or 'no digest'} (the lock's): kubelet would miss "
                      "the node cache and pull", found)
