"""images.yaml, the `environments:` part: registry, store, node settings, compression,
Packer sources, charts, cloud-init snippets, lint levels."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import yaml

from kiln import grammar
from kiln.model import (
    DEFAULT_GZIP_LEVEL,
    DEFAULT_MUTABLE_TAGS,
    DEFAULT_PLATFORM,
    DEFAULT_ZSTD_LEVEL,
    LEVELS,
    MAX_PRESIGN_SECONDS,
    RULE_IDS,
    ChartRelease,
    CloudInitSnippets,
    Compression,
    DirStore,
    Environment,
    LintSettings,
    NodeSettings,
    PathAt,
    S3Store,
    Store,
    parse_duration,
)
from kiln.schema import NodeReader

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


class EnvironmentReader(NodeReader):
    """The environments of images.yaml."""

    def environments(self, node: yaml.Node) -> dict[str, Environment]:
        fields = self.mapping(node, "environments", ())
        if fields is None:
            return {}
        if not fields:
            self.error(node, "environments must define at least one environment")
        out = {}
        for name, (key, value) in fields.items():
            if not grammar.NAME.fullmatch(name):
                self.error(key, f"environment name {name!r} must match ^{grammar.NAME.pattern}$")
                continue
            env = self.environment(name, key, value)
            if env is not None:
                out[name] = env
        return out

    def chart_entries(self, node: yaml.Node
                      ) -> tuple[tuple[PathAt, ...], tuple[ChartRelease, ...]]:
        """Plain paths (scanned file by file) and ``{chart, values}`` releases."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "charts must be a list")
            return (), ()
        paths, releases = [], []
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                value = self.string(item, "each of charts")
                if value is not None:
                    paths.append(PathAt(self.root / value, self.at(item)))
                continue
            fields = self.mapping(item, "charts entry", ("chart", "values"), ("chart",))
            if fields is None:
                continue
            chart = self.string(fields["chart"][1], "chart")
            values = (self.strings(fields["values"][1], "values") if "values" in fields
                      else [])
            if chart is not None:
                releases.append(ChartRelease(
                    PathAt(self.root / chart, self.at(fields["chart"][1])),
                    tuple(PathAt(self.root / v, self.at(n)) for n, v in values)))
        return tuple(paths), tuple(releases)

    def environment(self, name: str, key: yaml.Node, node: yaml.Node) -> Environment | None:
        what = f"environment {name!r}"
        fields = self.mapping(
            node, what,
            ("registry", "store", "node", "packer", "charts", "compression", "lint", "cloud_init",
             "registry_ca", "lock_public_key", "verify", "platforms"),
            ("registry", "store"),
        )
        if fields is None:
            return None
        registry = None
        if "registry" in fields:
            registry = self.string(fields["registry"][1], "registry")
            if registry is not None and not grammar.REGISTRY.fullmatch(registry):
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
        releases: tuple[ChartRelease, ...] = ()
        if "charts" in fields:
            charts, releases = self.chart_entries(fields["charts"][1])
        lint = self.lint_settings(fields["lint"][1]) if "lint" in fields else LintSettings()
        snippets = (self.cloud_init(fields["cloud_init"][1]) if "cloud_init" in fields
                    else CloudInitSnippets())
        platforms = (self.platforms(fields["platforms"][1]) if "platforms" in fields
                     else (DEFAULT_PLATFORM,))
        if (registry is None or store is None or node_settings is None or compression is None
                or platforms is None):
            return None
        return Environment(
            name=name, registry=registry, store=store, node=node_settings,
            compression=compression, packer_sources=packer, charts=charts,
            lint=lint, at=self.at(key), registry_at=self.at(fields["registry"][1]),
            cloud_init=snippets, releases=releases, platforms=platforms,
            registry_ca=(self.input_file(fields["registry_ca"][1], "registry_ca")
                         if "registry_ca" in fields else None),
            lock_public_key=(self.public_key(fields["lock_public_key"][1], "lock_public_key")
                             if "lock_public_key" in fields else None),
            verify=self.verify(fields["verify"][1]) if "verify" in fields else None,
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
        return self.s3_store(node)

    def s3_store(self, node: yaml.Node) -> S3Store | None:
        """An s3 store: each key read by its entry in a table (a new key is one line there)."""
        readers: dict[str, Callable[[yaml.Node], Any]] = {
            "type": lambda n: "s3",
            "bucket": lambda n: self.checked(n, "bucket", grammar.BUCKET, "an S3 bucket name "
                                             "(letters, digits, '.', '-', '_')"),
            "endpoint": lambda n: self.url(n, "endpoint"),
            "prefix": self.prefix,
            "region": lambda n: self.checked(n, "region", grammar.REGION,
                                             "an S3 region name (like us-east-1)"),
            "addressing": lambda n: self.choice(n, "addressing", ("auto", "path", "virtual")),
            "ca_bundle": lambda n: self.input_file(n, "ca_bundle"),
            "url": lambda n: self.url(n, "store url"),
            "url_mode": lambda n: self.choice(n, "url_mode", ("plain", "presigned", "sigv4")),
            "ttl": self.ttl,
        }
        fields = self.mapping(node, "s3 store", tuple(readers), ("bucket",))
        if fields is None or "bucket" not in fields:
            return None
        values = {key: readers[key](vnode) for key, (_, vnode) in fields.items()}
        if any(values[key] is None for key in ("bucket", "addressing", "url_mode", "prefix",
                                               "ttl") if key in values):
            return None
        if values.get("url_mode") == "plain" and values.get("url") is None:
            self.error(fields["url_mode"][1], "url_mode plain needs the store's url "
                                              "(the HTTP(S) base the nodes fetch from)")
        values.pop("type")
        if "ttl" in values:
            values["ttl_seconds"] = values.pop("ttl")
        return S3Store(**values)

    def prefix(self, node: yaml.Node) -> str | None:
        prefix = self.string(node, "prefix", empty=True)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix is not None and not grammar.matches(grammar.PREFIX, prefix):
            self.error(node, f"prefix {prefix!r} must be folder names of S3's safe "
                             "characters (letters, digits, ! _ . * ' ( ) -) ending in /")
            return None
        return prefix

    def ttl(self, node: yaml.Node) -> int | None:
        parsed = parse_duration(self.scalar(node))
        if parsed is None:
            self.error(node, "ttl must be a duration like 3600, 30m, 24h or 7d")
        elif parsed > MAX_PRESIGN_SECONDS:
            self.error(node, "ttl must be at most 7d: S3 presigned URLs expire after 7 days")
        else:
            return parsed
        return None

    def url(self, node: yaml.Node, what: str) -> str | None:
        value = self.string(node, what)
        if value is not None and not grammar.matches(grammar.BASE_URL, value):
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
        fields = self.mapping(node, "compression", ("algorithm", "level", "pulls"))
        if fields is None:
            return None
        algorithm = "zstd"
        if "algorithm" in fields:
            algorithm = self.choice(fields["algorithm"][1], "algorithm", ("zstd", "gzip")) or ""
        high = 19 if algorithm == "zstd" else 9
        level = DEFAULT_ZSTD_LEVEL if algorithm == "zstd" else DEFAULT_GZIP_LEVEL
        if "level" in fields:
            level = self.integer(fields["level"][1], "compression level", 1, high) or level
        pulls, pulls_at = "as-served", None
        if "pulls" in fields:
            pulls_at = self.at(fields["pulls"][1])
            pulls = self.choice(fields["pulls"][1], "compression pulls",
                                ("as-served", "recompress")) or pulls
        if not algorithm:
            return None
        return Compression(algorithm, level, pulls, pulls_at)  # type: ignore[arg-type]

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

    def lint_settings(self, node: yaml.Node) -> LintSettings:
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
