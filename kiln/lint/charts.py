"""Find the image references in Helm values, rendered manifests and plain YAML.

Two shapes are recognised, as charts write them:
``image: "registry.example.com/foundation/dex:v2.41.1"`` and
``image: {registry: ..., repository: ..., tag: ..., digest: ...}``.
A pull policy is taken from a sibling ``imagePullPolicy`` (a container spec), from a
``pullPolicy`` inside the image map (a values file), or else from a chart-wide key
(CHART_WIDE_POLICY). Images a program receives in its arguments (``--*-image=REF``) or
environment (``*_IMAGE``, ``RELATED_IMAGE_*``) are found too, marked ``indirect``: how the
program uses them is its own business, so lint reports them as warnings.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from kiln import refs
from kiln.errors import ConfigError, Problem
from kiln.model import Image, Location, PathAt
from kiln.yamlio import compose_file, gc_paused, position, walk

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ChartRef:
    """One image reference found in a chart file."""

    text: str
    at: Location
    pull_policy: str | None = None
    pull_policy_at: Location | None = None
    indirect: str = ""  # "argument" or "environment variable": found outside an image key
    tag_at: Location | None = None  # where the tag was set, when not at ``at`` (values)
    name_at: Location | None = None  # where the repository was set, when not at ``at``
    digest_at: Location | None = None  # where the digest was set
    tag_guessed: bool = False  # the tag is the chart's appVersion: its templates decide
    origin: str = ""  # "chart: values.path" for an image resolved from effective values


# Keys that set the pull policy of every container of a chart, as charts name them (paths
# from the top of a values file); a policy beside an image wins over them.
CHART_WIDE_POLICY = (
    ("imagePullPolicy",), ("pullPolicy",),
    ("global", "imagePullPolicy"), ("global", "pullPolicy"), ("global", "image", "pullPolicy"),
    ("global", "image", "imagePullPolicy"),
)
_ARGUMENT = re.compile(r"(--?[A-Za-z0-9_.-]*image)(=?)(.*)", re.IGNORECASE | re.DOTALL)
_FLAG = re.compile(r"(--?[A-Za-z0-9][A-Za-z0-9_.-]*)=(\S+)")
_ENV_NAME = re.compile(r"[A-Za-z0-9_]*_IMAGE|RELATED_IMAGE_[A-Za-z0-9_]+")


def display_path(path: Path) -> str:
    """``path`` relative to the working folder when it is below it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(_resolved(os.getcwd())))
    except ValueError:
        return str(absolute)


@functools.lru_cache(maxsize=8)
def _resolved(folder: str) -> Path:
    return Path(folder).resolve()  # once, not for every file


def chart_files(entries: tuple[PathAt, ...]) -> Iterator[Path]:
    """The YAML files below each entry, in a stable order; Helm templates are skipped."""
    for entry in entries:
        if entry.path.is_file():
            yield entry.path
            continue
        if not entry.path.is_dir():
            at = entry.at
            raise ConfigError([Problem(at.path, at.line, at.column,
                                       f"charts: no such file or folder: {entry.path}")])
        for folder, dirs, files in os.walk(entry.path):
            # Go templates under a chart's templates/ are not YAML until Helm renders them.
            if "Chart.yaml" in files and "templates" in dirs:
                dirs.remove("templates")
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith(YAML_SUFFIXES):
                    yield Path(folder) / name


@dataclass(frozen=True)
class Application:
    """An Argo CD Application or ApplicationSet document (kiln/lint/argocd.py reads it)."""

    node: yaml.MappingNode
    path: Path
    shown: str


def _is_application(document: yaml.Node) -> bool:
    fields = _scalar_keys(document) if isinstance(document, yaml.MappingNode) else {}
    version, kind = fields.get("apiVersion"), fields.get("kind")
    return (isinstance(version, yaml.ScalarNode) and str(version.value).startswith("argoproj.io/")
            and isinstance(kind, yaml.ScalarNode) and kind.value in ("Application",
                                                                     "ApplicationSet"))


def scan(entries: tuple[PathAt, ...]) -> tuple[list[ChartRef], list[Application]]:
    """Every image reference in the charts, and the Argo CD applications to read apart;
    a YAML error is a ConfigError at file:line:col."""
    found: list[ChartRef] = []
    applications: list[Application] = []
    for path in chart_files(entries):
        shown = display_path(path)
        with gc_paused():  # the file's nodes are dropped whole once walked: nothing to collect
            for document in compose_file(path, shown, fast=True):
                if _is_application(document):
                    assert isinstance(document, yaml.MappingNode)
                    applications.append(Application(document, path, shown))
                    continue
                policy = document_policy(document)
                found.extend(ref if ref.pull_policy or policy is None else
                             replace(ref, pull_policy=policy.value,
                                     pull_policy_at=_location(shown, policy))
                             for ref in refs_in(document, shown))
    return found, applications


def document_policy(document: yaml.Node) -> yaml.ScalarNode | None:
    """A values file's chart-wide pull policy (the first CHART_WIDE_POLICY key set)."""
    for keys in CHART_WIDE_POLICY:
        node: yaml.Node | None = document
        for key in keys:
            node = _scalar_keys(node).get(key) if isinstance(node, yaml.MappingNode) else None
        if isinstance(node, yaml.ScalarNode) and str(node.value).strip():
            return node
    return None


def refs_in(document: yaml.Node, path: str) -> Iterator[ChartRef]:
    """The image references anywhere below ``document`` (a file's, or a list in values)."""
    for node in walk(document):
        if not isinstance(node, yaml.MappingNode):
            continue
        fields = _container_keys(node)
        if not fields:
            continue
        if len(fields) > ("image" in fields) + ("imagePullPolicy" in fields):
            yield from _indirect_refs(fields, path)
        if "image" not in fields:
            continue
        value = fields["image"]
        policy_node = fields.get("imagePullPolicy")
        if isinstance(value, yaml.ScalarNode):
            text = value.value
        elif isinstance(value, yaml.MappingNode):
            inner = _scalar_keys(value)
            composed = _compose_image_map(inner)
            if composed is None:
                continue
            text = composed
            policy_node = policy_node or inner.get("pullPolicy")
        else:
            continue
        if not text or "{{" in text:
            continue  # unrendered template or unset value: nothing to align yet
        policy = policy_node.value if isinstance(policy_node, yaml.ScalarNode) else None
        yield ChartRef(
            text=text,
            at=_location(path, value),
            pull_policy=policy,
            pull_policy_at=_location(path, policy_node) if policy_node is not None else None,
        )


_CONTAINER_KEYS = frozenset(("image", "imagePullPolicy", "args", "command", "env"))


def _container_keys(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    """The keys of ``node`` refs_in reads (most mappings have none: nothing is built)."""
    return {key.value: value for key, value in node.value
            if isinstance(key, yaml.ScalarNode) and key.value in _CONTAINER_KEYS}


def _indirect_refs(fields: dict[str, yaml.Node], path: str) -> Iterator[ChartRef]:
    """``--x-image=REF`` / ``--x-image REF`` in args or command; ``X_IMAGE`` env values."""
    for key in ("args", "command"):
        items = fields.get(key)
        if not isinstance(items, yaml.SequenceNode):
            continue
        pending = False  # the previous item was a bare ``--x-image``
        for item in items.value:
            if not isinstance(item, yaml.ScalarNode):
                pending = False
                continue
            text = str(item.value)
            match = _ARGUMENT.fullmatch(text)
            if pending or (match and match.group(2)):
                skip = 0 if pending else len(match.group(1)) + 1 if match else 0
                yield from _indirect(text[skip:], path, item, skip, "argument")
            elif (flag := _FLAG.fullmatch(text)) and _looks_like_image(flag.group(2)):
                # --prometheus-config-reloader=quay.io/…:v0.80.0: no "image" in the flag
                yield from _indirect(flag.group(2), path, item, len(flag.group(1)) + 1,
                                     "argument")
            pending = bool(match and not match.group(2) and not match.group(3))
    env = fields.get("env")
    for item in env.value if isinstance(env, yaml.SequenceNode) else []:
        entry = _scalar_keys(item) if isinstance(item, yaml.MappingNode) else {}
        name, value = entry.get("name"), entry.get("value")
        if (isinstance(name, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode)
                and _ENV_NAME.fullmatch(str(name.value))):
            yield from _indirect(str(value.value), path, value, 0, "environment variable")


def _looks_like_image(text: str) -> bool:
    """A fully-qualified reference with a tag or digest (``host.domain/path:tag``): what a
    flag that takes an image is given; paths, URLs and ``host:port`` are not."""
    if "://" in text or "/" not in text:
        return False
    try:
        parsed = refs.parse(text)
    except refs.ReferenceError:
        return False
    return refs.is_fully_qualified(text) and (parsed.tag is not None or parsed.digest is not None)


def _indirect(text: str, path: str, node: yaml.ScalarNode, skip: int, kind: str
              ) -> Iterator[ChartRef]:
    text = text.strip()
    if not text or "{{" in text or "$(" in text:
        return  # unset, templated, or expanded by Kubernetes from another variable
    line, column = position(node)
    if "\n" not in str(node.value) and node.style in (None, "", "'", '"'):
        column += skip + (1 if node.style in ("'", '"') else 0)
    yield ChartRef(text, Location(path, line, column), indirect=kind)


def _scalar_keys(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    return {
        key.value: value
        for key, value in node.value
        if isinstance(key, yaml.ScalarNode) and isinstance(key.value, str)
    }


def _compose_image_map(fields: dict[str, yaml.Node]) -> str | None:
    """``registry/repository:tag@digest`` from a Helm-style image map (raw scalar text)."""
    def text(key: str) -> str:
        node = fields.get(key)
        return node.value.strip() if isinstance(node, yaml.ScalarNode) else ""

    repository = text("repository")
    if not repository:
        return None
    out = f"{text('registry')}/{repository}" if text("registry") else repository
    if text("tag"):
        out += f":{text('tag')}"
    if text("digest"):
        out += f"@{text('digest')}"
    return out


def _location(path: str, node: yaml.Node) -> Location:
    line, column = position(node)
    return Location(path, line, column)


@dataclass(frozen=True)
class Match:
    """How a chart reference relates to images.yaml."""

    kind: str  # declared | mismatch | undeclared | foreign | invalid
    image: Image | None = None


def classify(text: str, images: tuple[Image, ...], registry: str) -> Match:
    """Compare a chart reference with the declared images of an environment.

    ``declared``: the very string of a declared ref, or it pinned to a digest
    (``ref@sha256:…``, ``repo@sha256:…``: chart-digest-mismatch checks the digest against a
    lock).  ``mismatch``: the same repository as a declared image (or, for a short name, the
    same last path component) written differently.  ``undeclared``: on the environment's
    registry but not in images.yaml.  ``foreign``: somewhere else entirely.  ``invalid``: not
    a reference.
    """
    for image in images:
        if image.ref == text:
            return Match("declared", image)
    try:
        normal = refs.normalize(text)
        parsed = refs.parse(text)
    except refs.ReferenceError:
        return Match("invalid")
    if parsed.digest is not None:  # ref@sha256:… or repo@sha256:…: the digest is checked
        bare = parsed.repository + (f":{parsed.tag}" if parsed.tag else "")  # against a lock
        for image in images:
            if image.ref == bare or (parsed.tag is None and
                                     refs.parse(image.ref).repository == parsed.repository):
                return Match("declared", image)
    short = not refs.is_fully_qualified(text) and refs.parse(text).domain is None
    for image in images:
        declared = refs.normalize(image.ref)
        if declared.path == normal.path:
            return Match("mismatch", image)
        if short and declared.path.rsplit("/", 1)[-1] == normal.path.rsplit("/", 1)[-1]:
            return Match("mismatch", image)
    if normal.domain == registry:
        return Match("undeclared")
    return Match("foreign")
