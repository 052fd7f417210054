"""The image-map shapes real charts use, as data: one entry of a few lines per convention.

A map under an ``image`` key (or any ``*Image`` key, or one with a ``repository``) is an
image map, and so is a map with an ``image:`` string beside a ``tag``, ``version`` or
``registry``.  CONVENTIONS are tried in order; the first that resolves names the image.  To
support another chart, add a function ``(map, chart) -> parts | None`` and list it here.
A map that looks like an image but no convention resolves is reported (``image-unresolved``).

A chart reads the globals it declares: ``global.<key>`` counts only where the chart's own
values.yaml has that key (Bitnami charts declare ``global.imageRegistry``; a chart that does
not, ignores a user's ``global.imageRegistry``, and so does lint).  A component whose map
says ``enabled: false`` is not deployed and not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import yaml

from kiln.lint.charts import CHART_WIDE_POLICY, ChartRef, refs_in
from kiln.lint.values import Chart, Value, boolean
from kiln.model import Location


def _get(value: Value | None, *keys: str) -> Value | None:
    for key in keys:
        if value is None or value.children is None:
            return None
        value = value.children.get(key)
    return value


def _text(value: Value | None) -> str:
    return value.text() if value is not None else ""


def _pick(value: Value | None) -> Value | None:
    return value if _text(value) else None


def _global(chart: Chart, *keys: str) -> Value | None:
    """``global.<keys>``, when the chart declares it in its own defaults."""
    if ".".join(keys) not in chart.declared_globals:
        return None
    return _pick(_get(chart.values, "global", *keys))


@dataclass(frozen=True)
class Parts:
    """A resolved image: its name parts, each with the Value that set it."""

    name: list[Value | None]  # joined with "/"
    tag: Value | None
    digest: Value | None
    digest_prefix: str = ""  # "sha256:" for a bare hex ``sha``


Convention = Callable[[Value, Chart], "Parts | None"]


def _digest(image: Value) -> tuple[Value | None, str]:
    digest = _pick(_get(image, "digest"))
    if digest is not None:
        return digest, ""
    sha = _pick(_get(image, "sha"))  # kube-prometheus-stack: the hex alone
    return sha, ("" if sha is None or _text(sha).startswith("sha256:") else "sha256:")


def repository_map(image: Value, chart: Chart) -> Parts | None:
    """``{registry?, repository, tag?, digest? | sha?}``; a declared ``global.imageRegistry``
    (Bitnami) wins over ``registry``; an empty ``repository``/``tag`` falls back to a declared
    ``global.image.repository``/``tag`` (Argo CD)."""
    if image.children is None or "repository" not in image.children:
        return None
    repository = _pick(_get(image, "repository")) or _global(chart, "image", "repository")
    if repository is None:
        return None
    registry = _global(chart, "imageRegistry") or _pick(_get(image, "registry"))
    tag = _pick(_get(image, "tag")) or _global(chart, "image", "tag")
    return Parts([registry, repository], tag, *_digest(image))


def image_keyed_map(image: Value, chart: Chart) -> Parts | None:
    """``{registry?, image: name, tag? | version?, digest?}``, ``registry`` defaulting to a
    declared ``global.image.registry`` (ingress-nginx; Calico's operator says ``version``)."""
    if not _text(_get(image, "image")):
        return None
    registry = _pick(_get(image, "registry")) or _global(chart, "image", "registry")
    tag = _pick(_get(image, "tag")) or _pick(_get(image, "version"))
    return Parts([registry, _get(image, "image")], tag, *_digest(image))


def namespace_map(image: Value, chart: Chart) -> Parts | None:
    """``{name, tag?, digest?}`` under the chart's ``imageRegistry`` / ``imageNamespace``
    (top level, else declared globals: cert-manager)."""
    if not _text(_get(image, "name")):
        return None
    registry = _pick(_get(chart.values, "imageRegistry")) or _global(chart, "imageRegistry")
    namespace = _pick(_get(chart.values, "imageNamespace")) or _global(chart, "imageNamespace")
    if registry is None and namespace is None:
        return None
    return Parts([registry, namespace, _get(image, "name")], _pick(_get(image, "tag")),
                 *_digest(image))


CONVENTIONS: tuple[Convention, ...] = (repository_map, image_keyed_map, namespace_map)

_MARKERS = ("repository", "registry", "tag", "digest", "name", "image", "imageRegistry")
_BESIDE_IMAGE = ("tag", "version", "registry")  # an image string with its parts beside it


def is_image_map(key: str, value: Value) -> bool:
    if value.children is None:
        return False
    if key == "image" or key.endswith("Image"):
        return any(k in value.children for k in _MARKERS)
    if "repository" in value.children:
        return True
    image = value.children.get("image")
    return (image is not None and image.children is None and bool(image.text())
            and any(k in value.children for k in _BESIDE_IMAGE))


@dataclass(frozen=True)
class Unresolved:
    at: Location
    message: str


def image_refs(chart: Chart) -> Iterator[ChartRef | Unresolved]:
    """Every image of ``chart`` and its subcharts, as Helm's values resolve it."""
    assert chart.values.children is not None
    # a subchart's values are resolved in its own scope, below (or not at all: disabled)
    own = {k: v for k, v in chart.values.children.items() if k not in chart.scopes}
    policy = next((v for v in (_get(chart.values, *keys) for keys in CHART_WIDE_POLICY)
                   if v is not None and v.text()), None)
    found = list(_each(own, chart, chart.values, ""))
    default = _get(chart.values, "global", "image")
    if default is not None and _global(chart, "image", "repository") is not None:
        found += _resolve(default, chart, "global.image", chart.values)  # Argo CD's own
    for item in found:
        if isinstance(item, ChartRef) and item.pull_policy is None and policy is not None:
            item = replace(item, pull_policy=policy.text(), pull_policy_at=policy.at)
        yield item
    for sub in chart.subcharts:
        yield from image_refs(sub)
    for dependency in chart.missing:
        yield Unresolved(dependency.at, f"dependency {dependency.name!r} is not under "
                                        f"{chart.shown}/charts/: its images are not checked "
                                        "(run `helm dependency build`, or lint rendered output)")


def _walk(value: Value, chart: Chart, path: str, parent: Value
          ) -> Iterator[ChartRef | Unresolved]:
    if isinstance(value.node, yaml.SequenceNode):
        yield from refs_in(value.node, value.path)  # e.g. extra containers, as written
    if value.children is None or path == "global":
        return  # a leaf; or the globals, read by the conventions
    if boolean(value.children.get("enabled")) is False:
        return  # a component switched off: not deployed
    if is_image_map(path.rsplit(".", 1)[-1], value):
        yield from _resolve(value, chart, path, parent)
        return
    yield from _each(value.children, chart, value, path)


def _each(children: dict[str, Value], chart: Chart, parent: Value, path: str
          ) -> Iterator[ChartRef | Unresolved]:
    for key, child in children.items():
        where = f"{path}.{key}" if path else key
        if key == "image" and child.children is None and child.text():
            if "{{" not in child.text():  # an unrendered template: nothing to align yet
                policy = _policy((parent, "imagePullPolicy"))
                yield ChartRef(child.text(), child.at, *policy,
                               origin=f"{chart.name}: {where}")
        else:
            yield from _walk(child, chart, where, parent)


def _resolve(image: Value, chart: Chart, path: str, parent: Value
             ) -> Iterator[ChartRef | Unresolved]:
    for convention in CONVENTIONS:
        parts = convention(image, chart)
        if parts is None:
            continue
        text = "/".join(_text(p) for p in parts.name if _text(p))
        tag = _text(parts.tag) or chart.app_version
        if tag:
            text += f":{tag}"
        if _text(parts.digest):
            text += f"@{parts.digest_prefix}{_text(parts.digest)}"
        if "{{" in text:
            return  # an unrendered template: nothing to align yet
        setters = [parts.tag, parts.digest, *reversed(parts.name)]
        overridden = [v for v in setters if v is not None and _text(v) and v.override]
        named = [v for v in reversed(parts.name) if v is not None and _text(v)]
        yield ChartRef(
            text, overridden[0].at if overridden else image.at,
            *_policy((image, "pullPolicy"), (image, "imagePullPolicy"),
                     (parent, "imagePullPolicy"), (parent, "pullPolicy")),
            tag_at=_at(parts.tag),
            name_at=next((v.at for v in named if v.override), named[0].at if named else None),
            digest_at=_at(parts.digest),
            tag_guessed=not _text(parts.tag) and bool(chart.app_version),
            origin=f"{chart.name}: {path}")
        return
    yield _unresolved(image, path)


def _at(value: Value | None) -> Location | None:
    return value.at if value is not None and _text(value) else None


def _unresolved(image: Value, path: str) -> Unresolved:
    return Unresolved(image.at, f"{path!r} looks like an image map, but no known convention "
                                "resolves it to an image (see README, lint: image conventions)")


def _policy(*places: tuple[Value, str]) -> tuple[str | None, Location | None]:
    """The first pull policy set: in the image map, then beside it (grafana's sidecar)."""
    for value, key in places:
        policy = _pick(_get(value, key))
        if policy is not None:
            return policy.text(), policy.at
    return None, None
