"""The image-map shapes real charts use, as data: one entry of a few lines per convention.

A map under an ``image`` key (or any ``*Image`` key, or one with a ``repository``) is an
image map.  CONVENTIONS are tried in order; the first that resolves names the image.  To
support another chart, add a function ``(map, chart) -> parts | None`` and list it here.
A map that looks like an image but no convention resolves is reported (``image-unresolved``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import yaml

from kiln.lint.charts import CHART_WIDE_POLICY, ChartRef, refs_in
from kiln.lint.values import Chart, Value
from kiln.model import Location


def _get(value: Value | None, *keys: str) -> Value | None:
    for key in keys:
        if value is None or value.children is None:
            return None
        value = value.children.get(key)
    return value


def _text(value: Value | None) -> str:
    return value.text() if value is not None else ""


@dataclass(frozen=True)
class Parts:
    """A resolved image: its name parts, each with the Value that set it."""

    name: list[Value | None]  # joined with "/"
    tag: Value | None
    digest: Value | None


Convention = Callable[[Value, Chart], "Parts | None"]


def _tag(image: Value) -> Value | None:
    return _get(image, "tag")


def repository_map(image: Value, chart: Chart) -> Parts | None:
    """``{registry?, repository, tag?, digest?}``; ``global.imageRegistry`` (Bitnami) wins,
    then the map's ``registry``, then ``global.image.registry``."""
    if not _text(_get(image, "repository")):
        return None
    registry = (_pick(_get(chart.values, "global", "imageRegistry"))
                or _pick(_get(image, "registry"))
                or _pick(_get(chart.values, "global", "image", "registry")))
    return Parts([registry, _get(image, "repository")], _tag(image), _get(image, "digest"))


def image_keyed_map(image: Value, chart: Chart) -> Parts | None:
    """``{registry?, image: name, tag?, digest?}`` with ``global.image.registry``
    (ingress-nginx)."""
    if not _text(_get(image, "image")):
        return None
    registry = (_pick(_get(image, "registry"))
                or _pick(_get(chart.values, "global", "image", "registry")))
    return Parts([registry, _get(image, "image")], _tag(image), _get(image, "digest"))


def namespace_map(image: Value, chart: Chart) -> Parts | None:
    """``{imageRegistry?, imageNamespace?, name, tag?, digest?}``, each also under
    ``global`` (cert-manager style)."""
    if not _text(_get(image, "name")):
        return None
    registry = (_pick(_get(image, "imageRegistry"))
                or _pick(_get(chart.values, "global", "imageRegistry")))
    namespace = (_pick(_get(image, "imageNamespace"))
                 or _pick(_get(chart.values, "global", "imageNamespace")))
    if registry is None and namespace is None:
        return None
    return Parts([registry, namespace, _get(image, "name")], _tag(image), _get(image, "digest"))


CONVENTIONS: tuple[Convention, ...] = (repository_map, image_keyed_map, namespace_map)

_MARKERS = ("repository", "registry", "tag", "digest", "name", "image", "imageRegistry")


def _pick(value: Value | None) -> Value | None:
    return value if _text(value) else None


def is_image_map(key: str, value: Value) -> bool:
    if value.children is None:
        return False
    if key == "image" or key.endswith("Image"):
        return any(k in value.children for k in _MARKERS)
    return "repository" in value.children


@dataclass(frozen=True)
class Unresolved:
    at: Location
    message: str


def _unresolved(image: Value, key: str) -> Unresolved:
    return Unresolved(image.at, f"{key!r} looks like an image map, but no known convention "
                                "resolves it to an image (see README, lint: image conventions)")


def image_refs(chart: Chart) -> Iterator[ChartRef | Unresolved]:
    """Every image of ``chart`` and its subcharts, as Helm's values resolve it."""
    assert chart.values.children is not None
    # a subchart's values are resolved in its own scope, below (or not at all: disabled)
    own = {k: v for k, v in chart.values.children.items() if k not in chart.scopes}
    policy = next((v for v in (_get(chart.values, *keys) for keys in CHART_WIDE_POLICY)
                   if v is not None and v.text()), None)
    for item in _each(own, chart, chart.values):
        if isinstance(item, ChartRef) and item.pull_policy is None and policy is not None:
            item = replace(item, pull_policy=policy.text(), pull_policy_at=policy.at)
        yield item
    for sub in chart.subcharts:
        yield from image_refs(sub)
    for dependency in chart.missing:
        yield Unresolved(dependency.at, f"dependency {dependency.name!r} is not under "
                                        f"{chart.shown}/charts/: its images are not checked "
                                        "(run `helm dependency build`, or lint rendered output)")


def _walk(value: Value, chart: Chart, key: str) -> Iterator[ChartRef | Unresolved]:
    if isinstance(value.node, yaml.SequenceNode):
        yield from refs_in(value.node, value.path)  # e.g. extra containers, as written
    if value.children is None:
        return
    if key == "global":
        return  # read by the conventions, never an image of its own
    if is_image_map(key, value):
        yield from _resolve(value, chart, key)
        return
    yield from _each(value.children, chart, value)


def _each(children: dict[str, Value], chart: Chart, parent: Value
          ) -> Iterator[ChartRef | Unresolved]:
    for key, child in children.items():
        if key == "image" and child.children is None and child.text():
            if "{{" not in child.text():  # an unrendered template: nothing to align yet
                yield ChartRef(child.text(), child.at, *_policy(parent, "imagePullPolicy"))
        else:
            yield from _walk(child, chart, key)


def _resolve(image: Value, chart: Chart, key: str) -> Iterator[ChartRef | Unresolved]:
    for convention in CONVENTIONS:
        parts = convention(image, chart)
        if parts is None:
            continue
        text = "/".join(_text(p) for p in parts.name if _text(p))
        tag = _text(parts.tag) or chart.app_version
        if tag:
            text += f":{tag}"
        if _text(parts.digest):
            text += f"@{_text(parts.digest)}"
        setters = [parts.tag, parts.digest, *reversed(parts.name)]
        overridden = [v for v in setters if v is not None and _text(v) and v.override]
        at = overridden[0].at if overridden else image.at
        if "{{" not in text:  # an unrendered template: nothing to align yet
            tag_at = parts.tag.at if parts.tag is not None and _text(parts.tag) else None
            named = [v for v in reversed(parts.name) if v is not None and _text(v)]
            name_at = next((v.at for v in named if v.override), named[0].at if named else None)
            yield ChartRef(text, at, *_policy(image, "pullPolicy"), tag_at=tag_at,
                           name_at=name_at)
        return
    yield _unresolved(image, key)


def _policy(value: Value, key: str) -> tuple[str | None, Location | None]:
    policy = _get(value, key)
    if policy is None or not policy.text():
        return None, None
    return policy.text(), policy.at
