"""images.yaml: its loader (the images; kiln/environments.py reads the environments) and, for
the callers' convenience, the model's names (kiln/model.py).

Every problem is reported as ``path:line:col: message`` with the position of the offending
node; the loader collects all schema problems in one pass instead of stopping at the first.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from kiln import grammar, refs
from kiln.environments import EnvironmentReader
from kiln.errors import ConfigError, Problem
from kiln.model import (
    DEFAULT_MUTABLE_TAGS,
    DEFAULT_PLATFORM,
    LEVELS,
    REGISTRY_PLACEHOLDER,
    SUPPORTED_VERSION,
    ArchiveSource,
    BuildSource,
    CloudInitSnippets,
    Compression,
    Config,
    DirStore,
    Environment,
    Image,
    LintSettings,
    Location,
    NodeSettings,
    PathAt,
    PullSource,
    S3Store,
    Source,
    Store,
    parse_duration,
    recompresses,
)
from kiln.yamlio import compose_file

__all__ = [  # the model's names, re-exported: kiln.config.X for callers that load and use
    "DEFAULT_MUTABLE_TAGS", "DEFAULT_PLATFORM", "LEVELS", "REGISTRY_PLACEHOLDER",
    "SUPPORTED_VERSION", "ArchiveSource", "BuildSource", "CloudInitSnippets", "Compression",
    "Config", "DirStore", "Environment", "Image", "LintSettings", "Location", "NodeSettings",
    "PathAt", "PullSource", "S3Store", "Source", "Store", "load", "parse_duration",
]


def load(path: Path | str, display: str | None = None) -> Config:
    """Load and validate images.yaml; raise ConfigError listing every problem."""
    path = Path(path)
    shown = display if display is not None else str(path)
    documents = compose_file(path, shown)
    reader = _Reader(shown, path.resolve().parent)
    if len(documents) != 1:
        where = documents[1] if len(documents) > 1 else None
        if where is None:
            raise ConfigError([Problem(shown, 1, 1, "the file is empty: expected a mapping")])
        reader.error(where, "expected one YAML document, found several")
    config = reader.config(documents[0])
    if reader.problems or config is None:
        raise ConfigError(sorted(set(reader.problems), key=lambda p: (p.line, p.column)))
    return config


class _Reader(EnvironmentReader):
    """Walks the node tree of images.yaml, builds the model and records problems."""

    # -- the document -----------------------------------------------------------------------

    def config(self, node: yaml.Node) -> Config | None:
        fields = self.mapping(
            node, "images.yaml", ("version", "images", "environments"),
            ("version", "images", "environments"),
        )
        if fields is None:
            return None
        version = SUPPORTED_VERSION
        if "version" in fields:
            vnode = fields["version"][1]
            value = self.scalar(vnode)
            if value != SUPPORTED_VERSION or isinstance(value, bool):
                self.error(vnode, f"version must be {SUPPORTED_VERSION}")
        registries: list[str] = []
        environments: dict[str, Environment] = {}
        if "environments" in fields:
            environments = self.environments(fields["environments"][1])
            registries = [env.registry for env in environments.values()]
        images: list[Image] = []
        if "images" in fields:
            images = self.images(fields["images"][1], registries)
        self.signed_and_recompressed(images, environments)
        return Config(self.path, self.root, version, tuple(images), environments)

    def images(self, node: yaml.Node, registries: list[str]) -> list[Image]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "images must be a list")
            return []
        if not node.value:
            self.error(node, "images must list at least one image")
        out = []
        for item in node.value:
            image = self.image(item, registries)
            if image is not None:
                out.append(image)
        return out

    def image(self, node: yaml.Node, registries: list[str]) -> Image | None:
        fields = self.mapping(
            node, "image",
            ("name", "ref", "build", "pull", "archive", "platform", "platforms", "roles",
             "verify", "recompress"),
            ("name", "ref"),
        )
        if fields is None:
            return None
        name = ref = None
        if "name" in fields:
            name = self.string(fields["name"][1], "image name")
            if name is not None and not grammar.NAME.fullmatch(name):
                self.error(fields["name"][1],
                           f"image name {name!r} must match ^{grammar.NAME.pattern}$")
                name = None
        if "ref" in fields:
            ref = self.image_ref(fields["ref"][1], registries)
        sources = [k for k in ("build", "pull", "archive") if k in fields]
        source: Source | None = None
        if len(sources) != 1:
            where = fields[sources[1]][0] if len(sources) > 1 else node
            self.error(where, "an image needs exactly one source: build, pull or archive"
                       + (f" (found {', '.join(sources)})" if sources else ""))
        else:
            source = self.source(sources[0], fields[sources[0]][1])
        platforms = self.image_platforms(fields)
        roles: tuple[str, ...] = ()
        if "roles" in fields:
            roles = self.roles(fields["roles"][1])
        if "verify" in fields:
            if isinstance(source, PullSource):
                source = replace(source, verify=self.verify(fields["verify"][1]))
            elif source is not None:
                self.error(fields["verify"][0], "verify checks a pull source's upstream "
                                                "signature: this image is not pulled")
        recompress = self.recompress(fields, source)
        if name is None or ref is None or source is None:
            return None
        source_key = fields[sources[0]][0]
        return Image(
            name=name, ref=ref, source=source,
            platform=platforms[0] if platforms else DEFAULT_PLATFORM, platforms=platforms,
            roles=roles,
            at=self.at(node), name_at=self.at(fields["name"][1]),
            ref_at=self.at(fields["ref"][1]), source_at=self.at(source_key),
            recompress=recompress,
            recompress_at=self.at(fields["recompress"][0]) if "recompress" in fields else None,
        )

    def recompress(self, fields: dict[str, tuple[yaml.Node, yaml.Node]],
                   source: Source | None) -> bool | None:
        """``recompress: true|false``: a pull source's opt-in (or opt-out) of recompression."""
        if "recompress" not in fields:
            return None
        key, node = fields["recompress"]
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.error(node, "recompress must be true or false")
            return None
        if source is not None and not isinstance(source, PullSource):
            self.error(key, "recompress applies to pull sources only (what kiln builds or "
                            "converts is always compressed with the environment's compression)")
            return None
        return value

    def signed_and_recompressed(self, images: list[Image],
                                environments: dict[str, Environment]) -> None:
        """A recompressed pull is not what the upstream signed (its manifest is kiln's): a
        ``verify: {key}`` that would apply to it is an error, at the setting that turned
        recompression on for it."""
        for image in images:
            source = image.source
            if not isinstance(source, PullSource):
                continue
            for env in environments.values():
                policy = source.verify if source.verify is not None else env.verify
                if policy is None or not policy.checked or not recompresses(image, env):
                    continue
                why = ("recompress: true" if image.recompress
                       else f"environment {env.name}'s compression pulls: recompress")
                whose = "its own" if source.verify is not None else f"environment {env.name}'s"
                # where to change it: the image's own setting first
                where = (image.recompress_at if image.recompress else
                         policy.at if source.verify is not None else env.compression.pulls_at)
                where = where or image.at
                self.problems.append(Problem(
                    where.path, where.line, where.column,
                    f"image {image.name!r}: {why} and {whose} "
                    f"{'verify: {key}' if policy.key else 'keyless verify'} exclude each "
                    "other: a recompressed image has kiln's manifest digest, which the "
                    "upstream signature does not name; write verify: none on the image, or "
                    "recompress: false"))

    def image_platforms(self, fields: dict[str, tuple[yaml.Node, yaml.Node]]
                        ) -> tuple[str, ...]:
        """The image's ``platforms`` (or its one ``platform``); empty: the environment's."""
        if "platform" in fields and "platforms" in fields:
            self.error(fields["platform"][0], "give platforms or platform, not both (platforms: "
                                              "[linux/amd64, linux/arm64] says several)")
            return ()
        if "platforms" in fields:
            return self.platforms(fields["platforms"][1]) or ()
        if "platform" in fields:
            node = fields["platform"][1]
            if isinstance(node, yaml.SequenceNode):
                self.error(node, "platform names one os/arch[/variant]; for several write "
                                 "platforms: [linux/amd64, linux/arm64]")
                return ()
            value = self.string(node, "platform")
            if value is not None and not grammar.PLATFORM.fullmatch(value):
                self.error(node, f"platform must look like os/arch[/variant], not {value!r}")
                return ()
            return () if value is None else (value,)
        return ()

    def image_ref(self, node: yaml.Node, registries: list[str]) -> str | None:
        ref = self.string(node, "ref")
        if ref is None:
            return None
        candidates = [ref.replace(REGISTRY_PLACEHOLDER, r) for r in registries or ["example.com"]]
        for candidate in candidates if REGISTRY_PLACEHOLDER in ref else [ref]:
            try:
                parsed = refs.parse(candidate)
            except refs.ReferenceError as exc:
                self.error(node, f"ref: {exc}")
                return None
            if parsed.digest is not None:
                self.error(node, "ref must be name:tag without a digest: kiln tags the image "
                                 "itself, and a manifest digest changes between an imported "
                                 "archive and a registry copy")
                return None
        return ref

    def source(self, kind: str, node: yaml.Node) -> Source | None:
        if kind == "pull":
            value = self.string(node, "pull")
            if value is None:
                return None
            try:
                refs.normalize(value)
            except refs.ReferenceError as exc:
                self.error(node, f"pull: {exc}")
                return None
            return PullSource(value)
        if kind == "archive":
            path = self.relpath(node, "archive")
            return None if path is None else ArchiveSource(path)
        if isinstance(node, yaml.ScalarNode):
            path = self.relpath(node, "build")
            return None if path is None else BuildSource(context=path)
        fields = self.mapping(node, "build", ("context", "dockerfile", "args", "target"),
                              ("context",))
        if fields is None or "context" not in fields:
            return None
        context = self.relpath(fields["context"][1], "build context")
        dockerfile = "Dockerfile"
        if "dockerfile" in fields:
            dockerfile = self.string(fields["dockerfile"][1], "dockerfile") or dockerfile
        target = self.string(fields["target"][1], "target") if "target" in fields else None
        args: dict[str, str] = {}
        if "args" in fields:
            arg_fields = self.mapping(fields["args"][1], "build args", ())
            for arg, (_, vnode) in (arg_fields or {}).items():
                value = self.scalar(vnode)
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    self.error(vnode, f"build arg {arg!r} must be a string or a number")
                else:
                    args[arg] = str(value)
        if context is None:
            return None
        return BuildSource(context=context, dockerfile=dockerfile, args=args, target=target)
