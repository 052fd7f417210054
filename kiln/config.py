"""images.yaml: the typed model and its loader.

Every problem is reported as ``path:line:col: message`` with the position of the offending
node; the loader collects all schema problems in one pass instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from kiln import grammar, refs
from kiln.errors import ConfigError, Problem, UsageError
from kiln.yamlio import compose_file, construct, mapping_items, position, scalar_value

SUPPORTED_VERSION = 1
REGISTRY_PLACEHOLDER = "${registry}"
DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_MUTABLE_TAGS = (
    "latest", "main", "master", "stable", "edge", "nightly", "dev", "develop", "head", "canary",
)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

_NAME_RE = grammar.NAME
_PLATFORM_RE = grammar.PLATFORM
_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd]?)", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_REGISTRY_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII
)
LEVELS = ("error", "warning", "off")
# cloud_init write_files: each key and what its value must be (a grammar, text or a flag)
_WRITE_FILE_FIELDS: dict[str, re.Pattern[str] | type] = {
    "path": grammar.NODE_PATH, "content": str, "permissions": grammar.FILE_MODE,
    "owner": grammar.OWNER, "encoding": re.compile(r"b64|base64|gz|gzip|gz\+b64|gz\+base64|"
                                                   r"gzip\+b64|gzip\+base64|text/plain"),
    "append": bool, "defer": bool,
}
# node: durations (seconds) and their bounds
NODE_DURATIONS = {"stall_timeout": (1, 3600), "import_budget": (10, 7 * 86400),
                  "retry_max_delay": (1, 86400)}


@dataclass(frozen=True)
class Location:
    """Where a value was written: reported in lint findings."""

    path: str
    line: int
    column: int


@dataclass(frozen=True)
class PathAt:
    """A path from images.yaml (resolved against its folder) and where it was written."""

    path: Path
    at: Location


@dataclass(frozen=True)
class BuildSource:
    context: Path
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    kind: Literal["build"] = "build"


@dataclass(frozen=True)
class PullSource:
    ref: str
    kind: Literal["pull"] = "pull"


@dataclass(frozen=True)
class ArchiveSource:
    path: Path
    kind: Literal["archive"] = "archive"


Source = BuildSource | PullSource | ArchiveSource


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    source: Source
    platform: str
    roles: tuple[str, ...]  # empty: every role
    at: Location  # the list item
    name_at: Location
    ref_at: Location
    source_at: Location


@dataclass(frozen=True)
class DirStore:
    path: Path
    url: str | None = None
    type: Literal["dir"] = "dir"


@dataclass(frozen=True)
class S3Store:
    bucket: str
    endpoint: str | None = None
    prefix: str = ""
    region: str | None = None
    addressing: Literal["auto", "path", "virtual"] = "auto"
    ca_bundle: Path | None = None
    url: str | None = None
    url_mode: Literal["plain", "presigned", "sigv4"] = "presigned"
    ttl_seconds: int = 24 * 3600
    type: Literal["s3"] = "s3"


Store = DirStore | S3Store


@dataclass(frozen=True)
class NodeSettings:
    ca_bundle: Path | None = None
    parallel: int = 4
    user_data_limit: int = 16384
    containerd_timeout: int = 300
    # A node never hangs on the store: see README, images.yaml (node:).
    stall_timeout: int = 60  # a download slower than 1 KiB/s this long is abandoned
    import_budget: int = 1800  # seconds one importer run may spend fetching, retries included
    retries: int = 8  # download attempts per image in one run
    retry_max_delay: int = 300  # cap of the jittered exponential back-off
    on_import_failure: Literal["hold-kubelet", "start-kubelet"] = "hold-kubelet"


# zstd -1 already halves a typical image and compresses about twice as fast as -3 on the
# 2-core machines measured (see README, Performance); raise it per environment for WAN links.
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_GZIP_LEVEL = 6


@dataclass(frozen=True)
class CloudInitSnippets:
    """User additions merged into the generated user-data."""

    write_files: tuple[dict[str, Any], ...] = ()
    runcmd: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Compression:
    algorithm: Literal["zstd", "gzip"] = "zstd"
    level: int = DEFAULT_ZSTD_LEVEL


@dataclass(frozen=True)
class LintSettings:
    levels: dict[str, str] = field(default_factory=dict)
    mutable_tags: tuple[str, ...] = DEFAULT_MUTABLE_TAGS


@dataclass(frozen=True)
class Environment:
    name: str
    registry: str
    store: Store
    node: NodeSettings
    compression: Compression
    packer_sources: tuple[str, ...]
    charts: tuple[PathAt, ...]
    lint: LintSettings
    at: Location
    registry_at: Location
    cloud_init: CloudInitSnippets = CloudInitSnippets()
    registry_ca: Path | None = None  # CA bundle of the registry, for push / verify-registry


@dataclass(frozen=True)
class Config:
    path: str  # as the user named it: used in messages
    root: Path  # the folder relative paths are resolved against
    version: int
    images: tuple[Image, ...]
    environments: dict[str, Environment]

    def environment(self, name: str | None) -> Environment:
        """The environment called ``name``; a missing or unknown name is a UsageError."""
        known = ", ".join(sorted(self.environments)) or "none"
        if not name:
            raise UsageError(f"--env is required; environments in {self.path}: {known}")
        try:
            return self.environments[name]
        except KeyError:
            hint = _did_you_mean(name, list(self.environments))
            raise UsageError(
                f"no environment {name!r} in {self.path}{hint}; environments: {known}"
            ) from None

    def images_for(self, env: Environment) -> tuple[Image, ...]:
        """The images with ``${registry}`` replaced by the environment's registry."""
        return tuple(
            replace(image, ref=image.ref.replace(REGISTRY_PLACEHOLDER, env.registry))
            for image in self.images
        )


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


_REMOVED_KEYS = {  # keys older kilns read: say why, not "did you mean"
    "bundles": " (bundles were removed: each image is stored as its own object; delete the key)",
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_duration(value: Any) -> int | None:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return None


class _Reader:
    """Walks the node tree of images.yaml, builds the model and records problems."""

    def __init__(self, path: str, root: Path) -> None:
        self.path = path
        self.root = root
        self.problems: list[Problem] = []

    # -- primitives -------------------------------------------------------------------------

    def error(self, node: yaml.Node, message: str) -> None:
        line, column = position(node)
        self.problems.append(Problem(self.path, line, column, message))

    def at(self, node: yaml.Node) -> Location:
        line, column = position(node)
        return Location(self.path, line, column)

    def mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """The fields of a mapping node, checked against ``allowed`` and ``required``."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        try:
            items = mapping_items(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problems.append(
                Problem(self.path, mark.line + 1, mark.column + 1, f"{what}: {exc.problem}")
            )
            return None
        own = {id(key) for key, _ in node.value}
        fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in items:
            name = self.scalar(key)
            if not isinstance(name, str):
                self.error(key, f"{what}: keys must be strings")
                continue
            # A key written here overrides one merged in with `<<`; two written here clash.
            if name in fields and id(fields[name][0]) in own:
                self.error(key, f"{what}: duplicate key {name!r}")
                continue
            if allowed and name not in allowed:
                hint = _REMOVED_KEYS.get(name) or _did_you_mean(name, list(allowed))
                self.error(key, f"{what}: unknown key {name!r}{hint}")
                continue
            fields[name] = (key, value)
        for name in required:
            if name not in fields:
                self.error(node, f"{what}: missing required key {name!r}")
        return fields

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _NotScalar
        try:
            return scalar_value(node)
        except yaml.MarkedYAMLError as exc:
            self.error(node, f"{exc.problem}")
            return _NotScalar

    def string(self, node: yaml.Node, what: str, *, empty: bool = False) -> str | None:
        value = self.scalar(node)
        if not isinstance(value, str):
            self.error(node, f"{what} must be a string")
            return None
        if not empty and not value.strip():
            self.error(node, f"{what} must not be empty")
            return None
        return value

    def integer(self, node: yaml.Node, what: str, low: int, high: int) -> int | None:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, f"{what} must be an integer")
            return None
        if not low <= value <= high:
            self.error(node, f"{what} must be between {low} and {high}, not {value}")
            return None
        return value

    def choice(self, node: yaml.Node, what: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(node, what)
        if value is not None and value not in choices:
            self.error(node, f"{what} must be one of {', '.join(choices)}, not {value!r}")
            return None
        return value

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list of strings")
            return []
        out = []
        for item in node.value:
            value = self.string(item, f"each of {what}")
            if value is not None:
                out.append((item, value))
        return out

    def relpath(self, node: yaml.Node, what: str) -> Path | None:
        value = self.string(node, what)
        return None if value is None else self.root / value

    def input_file(self, node: yaml.Node, what: str) -> Path | None:
        """A path to a file kiln reads (a CA bundle): it must exist and be readable now."""
        path = self.relpath(node, what)
        if path is not None:
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                self.error(node, f"{what}: cannot read {path}: {exc.strerror or exc}")
                return None
        return path

    def checked(self, node: yaml.Node, what: str, pattern: re.Pattern[str], shape: str,
                *, empty: bool = False) -> str | None:
        """A string that ``pattern`` matches whole (it may reach a node)."""
        value = self.string(node, what, empty=empty)
        if value is not None and not grammar.matches(pattern, value):
            self.error(node, f"{what} {value!r} must match {shape}")
            return None
        return value

    def matching(self, node: yaml.Node, what: str, pattern: re.Pattern[str], shape: str
                 ) -> list[str]:
        """A list of strings, each matching ``pattern`` whole."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what}s must be a list of strings")
            return []
        values = (self.checked(item, what, pattern, shape) for item in node.value)
        return [v for v in values if v is not None]

    def roles(self, node: yaml.Node, what: str = "role") -> tuple[str, ...]:
        return tuple(self.matching(node, what, grammar.ROLE, grammar.ROLE.pattern))

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
            ("name", "ref", "build", "pull", "archive", "platform", "roles"), ("name", "ref"),
        )
        if fields is None:
            return None
        name = ref = None
        if "name" in fields:
            name = self.string(fields["name"][1], "image name")
            if name is not None and not _NAME_RE.fullmatch(name):
                self.error(fields["name"][1],
                           f"image name {name!r} must match ^{_NAME_RE.pattern}$")
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
        platform = DEFAULT_PLATFORM
        if "platform" in fields:
            value = self.string(fields["platform"][1], "platform")
            if value is not None and not _PLATFORM_RE.fullmatch(value):
                self.error(fields["platform"][1],
                           f"platform must look like os/arch[/variant], not {value!r}")
            elif value is not None:
                platform = value
        roles: tuple[str, ...] = ()
        if "roles" in fields:
            roles = self.roles(fields["roles"][1])
        if name is None or ref is None or source is None:
            return None
        source_key = fields[sources[0]][0]
        return Image(
            name=name, ref=ref, source=source, platform=platform, roles=roles,
            at=self.at(node), name_at=self.at(fields["name"][1]),
            ref_at=self.at(fields["ref"][1]), source_at=self.at(source_key),
        )

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

    def environments(self, node: yaml.Node) -> dict[str, Environment]:
        fields = self.mapping(node, "environments", ())
        if fields is None:
            return {}
        if not fields:
            self.error(node, "environments must define at least one environment")
        out = {}
        for name, (key, value) in fields.items():
            if not _NAME_RE.fullmatch(name):
                self.error(key, f"environment name {name!r} must match ^{_NAME_RE.pattern}$")
                continue
            env = self.environment(name, key, value)
            if env is not None:
                out[name] = env
        return out

    def environment(self, name: str, key: yaml.Node, node: yaml.Node) -> Environment | None:
        what = f"environment {name!r}"
        fields = self.mapping(
            node, what,
            ("registry", "store", "node", "packer", "charts", "compression", "lint", "cloud_init",
             "registry_ca"),
            ("registry", "store"),
        )
        if fields is None:
            return None
        registry = None
        if "registry" in fields:
            registry = self.string(fields["registry"][1], "registry")
            if registry is not None and not _REGISTRY_RE.fullmatch(registry):
                self.error(fields["registry"][1],
                           f"registry must be a host name with an optional port, not {registry!r}")
                registry = None
        store = self.store(fields["store"][1]) if "store" in fields else None
        node_settings = (self.node_settings(fields["node"][1]) if "node" in fields
                         else NodeSettings())
        compression = (self.compression(fields["compression"][1]) if "compression" in fields
                       else Compression())
        packer: tuple[str, ...] = ()
        if "packer" in fields:
            pfields = self.mapping(fields["packer"][1], "packer", ("sources",))
            if pfields and "sources" in pfields:
                packer = tuple(self.matching(pfields["sources"][1], "packer source",
                                             grammar.PACKER_SOURCE, "source.BUILDER.NAME"))
        charts: tuple[PathAt, ...] = ()
        if "charts" in fields:
            charts = tuple(PathAt(self.root / v, self.at(n))
                           for n, v in self.strings(fields["charts"][1], "charts"))
        lint = self.lint_settings(fields["lint"][1]) if "lint" in fields else LintSettings()
        snippets = (self.cloud_init(fields["cloud_init"][1]) if "cloud_init" in fields
                    else CloudInitSnippets())
        if registry is None or store is None or node_settings is None or compression is None:
            return None
        return Environment(
            name=name, registry=registry, store=store, node=node_settings,
            compression=compression, packer_sources=packer, charts=charts,
            lint=lint, at=self.at(key), registry_at=self.at(fields["registry"][1]),
            cloud_init=snippets,
            registry_ca=(self.input_file(fields["registry_ca"][1], "registry_ca")
                         if "registry_ca" in fields else None),
        )

    def store(self, node: yaml.Node) -> Store | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, "store must be a mapping with a type (dir or s3)")
            return None
        kind = None
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.value == "type":
                kind = self.choice(vnode, "store type", ("dir", "s3"))
        if kind is None:
            self.error(node, "store: missing required key 'type' (dir or s3)")
            return None
        if kind == "dir":
            fields = self.mapping(node, "dir store", ("type", "path", "url"), ("path",))
            if fields is None or "path" not in fields:
                return None
            path = self.relpath(fields["path"][1], "store path")
            url = self.url(fields["url"][1], "store url") if "url" in fields else None
            return None if path is None else DirStore(path=path, url=url)
        fields = self.mapping(
            node, "s3 store",
            ("type", "bucket", "endpoint", "prefix", "region", "addressing", "ca_bundle", "url",
             "url_mode", "ttl"),
            ("bucket",),
        )
        if fields is None or "bucket" not in fields:
            return None
        bucket = self.checked(fields["bucket"][1], "bucket", grammar.BUCKET,
                              "an S3 bucket name (letters, digits, '.', '-', '_')")
        get = fields.get
        endpoint = self.url(fields["endpoint"][1], "endpoint") if get("endpoint") else None
        prefix: str | None = ""
        if get("prefix"):
            pnode = fields["prefix"][1]
            prefix = self.string(pnode, "prefix", empty=True)
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            if prefix is not None and not grammar.matches(grammar.PREFIX, prefix):
                self.error(pnode, f"prefix {prefix!r} must be folder names of S3's safe "
                                  "characters (letters, digits, ! _ . * ' ( ) -) ending in /")
                prefix = None
        region = (self.checked(fields["region"][1], "region", grammar.REGION,
                               "an S3 region name (like us-east-1)") if get("region") else None)
        addressing = (self.choice(fields["addressing"][1], "addressing",
                                  ("auto", "path", "virtual")) if get("addressing") else "auto")
        ca_bundle = (self.input_file(fields["ca_bundle"][1], "ca_bundle") if get("ca_bundle")
                     else None)
        url = self.url(fields["url"][1], "store url") if get("url") else None
        url_mode = (self.choice(fields["url_mode"][1], "url_mode",
                                ("plain", "presigned", "sigv4")) if get("url_mode") else
                    "presigned")
        ttl = 24 * 3600
        if get("ttl"):
            tnode = fields["ttl"][1]
            parsed = parse_duration(self.scalar(tnode))
            if parsed is None:
                self.error(tnode, "ttl must be a duration like 3600, 30m, 24h or 7d")
            elif parsed > MAX_PRESIGN_SECONDS:
                self.error(tnode, "ttl must be at most 7d: S3 presigned URLs expire after 7 days")
            else:
                ttl = parsed
        if url_mode == "plain" and url is None and get("url_mode"):
            self.error(fields["url_mode"][1], "url_mode plain needs the store's url "
                                              "(the HTTP(S) base the nodes fetch from)")
        if bucket is None or addressing is None or url_mode is None or prefix is None:
            return None
        return S3Store(
            bucket=bucket, endpoint=endpoint, prefix=prefix, region=region,
            addressing=addressing,  # type: ignore[arg-type]
            ca_bundle=ca_bundle, url=url,
            url_mode=url_mode,  # type: ignore[arg-type]
            ttl_seconds=ttl,
        )

    def url(self, node: yaml.Node, what: str) -> str | None:
        value = self.string(node, what)
        if value is not None and not grammar.matches(grammar.URL, value):
            self.error(node, f"{what} must be an http:// or https:// URL of RFC 3986 "
                             f"characters, not {value!r}")
            return None
        return value

    def node_settings(self, node: yaml.Node) -> NodeSettings | None:
        fields = self.mapping(
            node, "node", ("ca_bundle", "parallel", "user_data_limit", "containerd_timeout",
                           *NODE_DURATIONS, "retries", "on_import_failure"),
        )
        if fields is None:
            return None
        settings = NodeSettings()
        if "ca_bundle" in fields:
            settings = replace(settings, ca_bundle=self.input_file(fields["ca_bundle"][1],
                                                                   "ca_bundle"))
        numbers: dict[str, int] = {}
        for key, low, high in (("parallel", 1, 32), ("user_data_limit", 1024, 1 << 30),
                               ("containerd_timeout", 1, 86400), ("retries", 1, 1000)):
            if key in fields:
                value = self.integer(fields[key][1], key, low, high)
                if value is not None:
                    numbers[key] = value
        for key, (low, high) in NODE_DURATIONS.items():
            if key in fields:
                dnode = fields[key][1]
                seconds = parse_duration(self.scalar(dnode))
                if seconds is None or not low <= seconds <= high:
                    self.error(dnode, f"{key} must be a duration like 90, 90s, 30m or 2h, "
                                      f"from {low}s to {high}s")
                else:
                    numbers[key] = seconds
        if "on_import_failure" in fields:
            choice = self.choice(fields["on_import_failure"][1], "on_import_failure",
                                 ("hold-kubelet", "start-kubelet"))
            if choice is not None:
                settings = replace(settings, on_import_failure=choice)  # type: ignore[arg-type]
        return replace(settings, **numbers)  # type: ignore[arg-type]

    def compression(self, node: yaml.Node) -> Compression | None:
        if isinstance(node, yaml.ScalarNode):
            algorithm = self.choice(node, "compression", ("zstd", "gzip"))
            if algorithm is None:
                return None
            level = DEFAULT_ZSTD_LEVEL if algorithm == "zstd" else DEFAULT_GZIP_LEVEL
            return Compression(algorithm, level)  # type: ignore[arg-type]
        fields = self.mapping(node, "compression", ("algorithm", "level"))
        if fields is None:
            return None
        algorithm = "zstd"
        if "algorithm" in fields:
            algorithm = self.choice(fields["algorithm"][1], "algorithm", ("zstd", "gzip")) or ""
        high = 19 if algorithm == "zstd" else 9
        level = DEFAULT_ZSTD_LEVEL if algorithm == "zstd" else DEFAULT_GZIP_LEVEL
        if "level" in fields:
            level = self.integer(fields["level"][1], "compression level", 1, high) or level
        if not algorithm:
            return None
        return Compression(algorithm, level)  # type: ignore[arg-type]

    def cloud_init(self, node: yaml.Node) -> CloudInitSnippets:
        fields = self.mapping(node, "cloud_init", ("write_files", "runcmd"))
        if not fields:
            return CloudInitSnippets()
        files: list[dict[str, Any]] = []
        if "write_files" in fields:
            wnode = fields["write_files"][1]
            if not isinstance(wnode, yaml.SequenceNode):
                self.error(wnode, "cloud_init write_files must be a list")
            else:
                files = [f for f in map(self.write_file, wnode.value) if f is not None]
        commands: list[Any] = []
        if "runcmd" in fields:
            rnode = fields["runcmd"][1]
            if not isinstance(rnode, yaml.SequenceNode):
                self.error(rnode, "cloud_init runcmd must be a list")
            else:
                for item in rnode.value:
                    value = self.plain(item)
                    words = value if isinstance(value, list) else [value]
                    if not all(isinstance(v, str) for v in words):
                        self.error(item, "each runcmd entry must be a string or a list of strings")
                    elif self.text_ok(item, "runcmd entry", words):
                        commands.append(value)
        return CloudInitSnippets(tuple(files), tuple(commands))

    def write_file(self, item: yaml.Node) -> dict[str, Any] | None:
        """One write_files entry: every field checked, the content any text but control bytes."""
        what = "cloud_init write_files entry"
        entry = self.mapping(item, what, tuple(_WRITE_FILE_FIELDS), ("path",))
        if entry is None or "path" not in entry:
            return None
        value = self.plain(item)
        if not isinstance(value, dict):
            return None
        ok = True
        for key, (_, vnode) in entry.items():
            kind = _WRITE_FILE_FIELDS[key]
            field_value = value.get(key)
            if isinstance(kind, re.Pattern):
                if not grammar.matches(kind, field_value):
                    self.error(vnode, f"write_files {key} {field_value!r} must match "
                                      f"{kind.pattern}")
                    ok = False
            elif kind is bool and not isinstance(field_value, bool):
                self.error(vnode, f"write_files {key} must be true or false")
                ok = False
            elif kind is str and not isinstance(field_value, str | bytes):
                self.error(vnode, f"write_files {key} must be text (or !!binary)")
                ok = False
            elif isinstance(field_value, str):
                ok = self.text_ok(vnode, f"write_files {key}", [field_value]) and ok
        return value if ok else None

    def text_ok(self, node: yaml.Node, what: str, texts: list[str]) -> bool:
        """False (and a problem) when a text holds control characters other than tab/newline."""
        for text in texts:
            bad = grammar.control_characters(text)
            if bad:
                self.error(node, f"{what} holds the control character {bad[0]!r}")
                return False
        return True

    def plain(self, node: yaml.Node) -> Any:
        try:
            return construct(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problems.append(Problem(self.path, mark.line + 1, mark.column + 1,
                                         str(exc.problem)))
            return None

    def lint_settings(self, node: yaml.Node) -> LintSettings:
        from kiln.lint.rules import RULE_IDS  # the rule ids are the lint package's to own

        fields = self.mapping(node, "lint", ("levels", "mutable_tags"))
        if fields is None:
            return LintSettings()
        levels: dict[str, str] = {}
        if "levels" in fields:
            level_fields = self.mapping(fields["levels"][1], "lint levels", RULE_IDS)
            for rule, (_, vnode) in (level_fields or {}).items():
                if self.scalar(vnode) is False:  # YAML 1.1 reads a bare `off` as false
                    levels[rule] = "off"
                    continue
                level = self.choice(vnode, f"level of {rule}", LEVELS)
                if level is not None:
                    levels[rule] = level
        tags: tuple[str, ...] = DEFAULT_MUTABLE_TAGS
        if "mutable_tags" in fields:
            tags = tuple(v for _, v in self.strings(fields["mutable_tags"][1], "mutable_tags"))
        return LintSettings(levels=levels, mutable_tags=tags)


class _NotScalarType:
    pass


_NotScalar = _NotScalarType()
