"""Find the image references in Helm values, rendered manifests and plain YAML.

Two shapes are recognised, as charts write them:
``image: "registry.example.com/foundation/dex:v2.41.1"`` and
``image: {registry: ..., repository: ..., tag: ..., digest: ...}``.
A pull policy is taken from a sibling ``imagePullPolicy`` (a container spec) or from a
``pullPolicy`` inside the image map (a values file).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
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


def scan(entries: tuple[PathAt, ...]) -> list[ChartRef]:
    """Every image reference in the charts; a YAML error is a ConfigError at file:line:col."""
    found: list[ChartRef] = []
    for path in chart_files(entries):
        shown = display_path(path)
        with gc_paused():  # the file's nodes are dropped whole once walked: nothing to collect
            for document in compose_file(path, shown, fast=True):
                found.extend(refs_in(document, shown))
    return found


def refs_in(document: yaml.Node, path: str) -> Iterator[ChartRef]:
    """The image references anywhere below ``document`` (a file's, or a list in values)."""
    for node in walk(document):
        if not isinstance(node, yaml.MappingNode):
            continue
        fields = _scalar_keys(node)
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

    ``declared``: the very string of a declared ref.  ``mismatch``: the same repository
    as a declared image (or, for a short name, the same last path component) written
    differently.  ``undeclared``: on the environment's registry but not in images.yaml.
    ``foreign``: somewhere else entirely.  ``invalid``: not a reference.
    """
    for image in images:
        if image.ref == text:
            return Match("declared", image)
    try:
        normal = refs.normalize(text)
    except refs.ReferenceError:
        return Match("invalid")
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
