"""Render what nodes run, from the lock: the node importer and its data, cloud-init user-data,
per-node NoCloud seeds, and the Packer provisioners. Needs the lock and the store's URL
signing, never the Docker engine.

One Jinja environment, built here, with StrictUndefined: a template that names a variable
render does not pass fails instead of writing an empty string onto a node.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from kiln import cloudconfig, grammar, pem, platforms
from kiln import lock as lockfile
from kiln.files import write_atomic
from kiln.inventory import Node
from kiln.locators import (
    GOLDEN_FLAG,
    GoldenCredentialsError,
    Locator,
    PlainLocator,
    PresignedLocator,
    RenderError,
    SigV4Locator,
    golden_credentials_refusal,
    locator_for,
    missing_url,
)
from kiln.lock import Lock, LockedImage, images_for_roles
from kiln.model import Environment, S3Store


def _templates() -> Path:
    """kiln/templates in an installed wheel; the checkout's top-level templates/ otherwise."""
    here = Path(__file__).resolve().parent
    packaged = here / "templates"
    return packaged if packaged.is_dir() else here.parent / "templates"


__all__ = [  # the locators are re-exported: render is where callers look for them
    "GOLDEN_FLAG", "TEMPLATES", "GoldenCredentialsError", "Locator", "PlainLocator",
    "PresignedLocator", "RenderError", "Rendered", "Renderer", "SigV4Locator",
    "golden_credentials_refusal", "hcl_string", "images_for_roles", "jinja_env",
    "locator_for", "missing_url", "render", "render_nodes", "render_packer",
]
TEMPLATES = _templates()
PREFIX = "/usr/local/lib/kiln"  # where nodes keep the importer, its data and the CA
IMPORTER = "import-images.sh"
NODE_FILES = ("import-images", "images.data", "kiln-import.service", "10-kiln-import.conf")

# Each value of an `image` line in the data file, and the grammar it must match whole: the
# importer splits lines on white space, so one newline or space would add a line or a field.
DATA_FIELDS: dict[str, re.Pattern[str]] = {
    "name": grammar.NAME, "ref": grammar.REFERENCE, "digest_ref": grammar.DIGEST_REFERENCE,
    "image_id": grammar.IMAGE_ID, "sha256": grammar.SHA256_HEX, "size": grammar.COUNT,
    "uncompressed_size": grammar.COUNT, "compression": grammar.COMPRESSION,
    "platform": grammar.PLATFORM, "url": grammar.URL, "index_ref": grammar.INDEX_REFERENCE,
}
# ... and of each `set` line kiln writes.
SETTING_VALUES: dict[str, re.Pattern[str]] = {
    "stall_timeout": grammar.COUNT, "import_budget": grammar.COUNT, "retries": grammar.COUNT,
    "retry_max_delay": grammar.COUNT, "lock": grammar.SHA256_HEX,
    "sigv4": re.compile(rf"aws:amz:{grammar.REGION.pattern}:s3"),
    "sigv4_user": grammar.CREDENTIAL, "sigv4_token": grammar.CREDENTIAL,
}
RUN_DIR = "/run/kiln"  # on nodes: state of this boot (failed runs, the kubelet gate's check)
RESTART_SEC = 10  # systemd restarts a failed import after this; the importer adds its back-off


def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    env.filters["hcl"] = hcl_string
    return env


def hcl_string(value: str) -> str:
    """``value`` as an HCL2 quoted string: JSON escapes, and no ``${``/``%{`` template."""
    if not isinstance(value, str):
        raise RenderError(f"HCL string expected, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=True).replace("${", "$${").replace("%{", "%%{")


# -- the pieces -----------------------------------------------------------------------------------


@dataclass
class Rendered:
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    secret: bool = False
    private: bool = False  # the node files holding URLs were written 0600


class Renderer:
    def __init__(self, env: Environment, lock: Lock, locator: Locator, *,
                 runcmd_waits_for_success: bool | None = None,
                 sign: Callable[[bytes], bytes] | None = None) -> None:
        self.env = env
        self.sign = sign  # signs each data file (a `sig` line nodes holding the key check)
        self.lock = lock
        self.locator = locator
        # None: as on_import_failure says. `try` waits for the first run only, to report it.
        self.runcmd_waits_for_success = runcmd_waits_for_success
        self.jinja = jinja_env()
        self.ca_pem = self._read_ca()
        self._urls: dict[str, str] = {}

    def _read_ca(self) -> str:
        path = self.env.node.ca_bundle
        return "" if path is None else pem.read_bundle(path)

    def template(self, name: str, **values: Any) -> str:
        return self.jinja.get_template(name).render(**values)

    def url(self, key: str) -> str:
        if key not in self._urls:
            self._urls[key] = self.locator.url(key)
        return self._urls[key]

    def data_file(self, images: list[LockedImage]) -> str:
        rows = []
        for image in images:
            if not grammar.matches(grammar.OBJECT_KEY, image.key):
                raise RenderError(f"the lock's object key for image {image.name!r} is not an "
                                  f"object key: {image.key!r}")
            row = {"name": image.name, "ref": image.ref, "digest_ref": image.digest_ref or "",
                   "image_id": image.image_id,
                   "sha256": image.sha256, "size": str(image.size),
                   "uncompressed_size": str(image.uncompressed_size),
                   "compression": image.compression, "platform": image.platform,
                   "url": self.url(image.key), "index_ref": image.index_ref or "-"}
            for field_name, value in row.items():
                if not grammar.matches(DATA_FIELDS[field_name], value):
                    raise RenderError(f"image {image.name!r}: the {field_name} {value!r} "
                                      "cannot go to nodes (it does not match its grammar; "
                                      "was the lock edited?)")
            rows.append(row)
        node = self.env.node
        settings = [("stall_timeout", str(node.stall_timeout)),
                    ("import_budget", str(node.import_budget)),
                    ("retries", str(node.retries)),
                    ("retry_max_delay", str(node.retry_max_delay)),
                    # the lock the images come from: nodes label what they pin with it
                    ("lock", hashlib.sha256(lockfile.to_json(self.lock).encode()).hexdigest()),
                    *self.locator.settings()]
        for key, value in settings:
            if not grammar.matches(SETTING_VALUES[key], value):
                shown = "(hidden)" if key.startswith("sigv4_") else value
                raise RenderError(f"the {key} setting {shown!r} cannot go to nodes: it must "
                                  f"match {SETTING_VALUES[key].pattern}")
        text = self.template(
            "images.data.j2", env=self.env.name, images=rows, settings=settings,
            parallel=node.parallel, containerd_timeout=node.containerd_timeout,
            ca_bundle="ca.pem" if self.ca_pem else "", secret=self.locator.secret,
        )
        if self.sign is None:
            return text
        # over every byte above it; the importer checks the rest of the file against it
        return text + f"sig {base64.b64encode(self.sign(text.encode())).decode()}\n"

    @property
    def hold_kubelet(self) -> bool:
        return self.env.node.on_import_failure == "hold-kubelet"

    def unit(self) -> str:
        node = self.env.node
        # systemd's backstop: containerd's wait, the back-off before a retried run, the
        # budget, and as long again for the imports that follow the last download
        timeout = node.containerd_timeout + node.retry_max_delay + 2 * node.import_budget
        return self.template("kiln-import.service.j2", env=self.env.name, prefix=PREFIX,
                             run_dir=RUN_DIR, restart_sec=RESTART_SEC, timeout=timeout,
                             hold_kubelet=self.hold_kubelet)

    def dropin(self) -> str:
        return self.template("kubelet-kiln.conf.j2", prefix=PREFIX, run_dir=RUN_DIR,
                             hold_kubelet=self.hold_kubelet)

    def import_runcmd(self) -> list[str]:
        """cloud-init's runcmd step before the user's (kubeadm join): it waits for the import.
        hold-kubelet: until the unit has succeeded (systemd retries it); start-kubelet: for
        its first run only."""
        waits = self.runcmd_waits_for_success
        if not (self.hold_kubelet if waits is None else waits):
            return ["systemctl", "start", "kiln-import.service"]
        return ["sh", "-c", "if [ -d /run/systemd/system ]; then until systemctl start "
                            "kiln-import.service; do sleep 10; done; fi"]

    def importer(self) -> str:
        return (TEMPLATES / IMPORTER).read_text()

    def importer_compact(self) -> str:
        """The importer for user-data, where bytes count (EC2: 16 KiB): compact_shell."""
        return compact_shell(self.importer())

    def bootcmd(self) -> str:
        """Every boot, in cloud-init's first stage: install the unit and make kubelet wait for
        it. Started here, it runs before kubelet and before runcmd (which is too late alone).
        The unit texts reach the shell single-quoted by shlex: never pasted."""
        unit = "/etc/systemd/system/kiln-import.service"
        dropin = "/etc/systemd/system/kubelet.service.d/10-kiln-import.conf"
        return "\n".join([
            "mkdir -p /etc/systemd/system/kubelet.service.d",
            f"printf '%s' {shlex.quote(self.unit())} > {unit}",
            f"printf '%s' {shlex.quote(self.dropin())} > {dropin}",
            "if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then",
            "  systemctl daemon-reload",
            "  systemctl enable kiln-import.service",
            "  systemctl start --no-block kiln-import.service",
            "fi",
            "",
        ])

    def user_data(self, images: list[LockedImage], roles: tuple[str, ...] | None) -> str:
        """The cloud-config: a Python structure, serialized, read back and compared."""
        del roles  # the images were chosen by role already; no data goes into comments
        document: dict[str, Any] = {}
        if self.ca_pem:
            document["ca_certs"] = {"trusted": [self.ca_pem]}
        document["bootcmd"] = [self.bootcmd()]
        files: list[dict[str, Any]] = [
            {"path": f"{PREFIX}/import-images", "permissions": "0755",
             "content": self.importer_compact()},
            {"path": f"{PREFIX}/images.data", "permissions": "0600",
             "content": self.data_file(images)},
        ]
        if self.ca_pem:
            files.append({"path": f"{PREFIX}/ca.pem", "permissions": "0644",
                          "content": self.ca_pem})
        files.extend(dict(item) for item in self.env.cloud_init.write_files)
        document["write_files"] = files
        # Waits for the import if it is still running; the user's join steps come after it.
        document["runcmd"] = [self.import_runcmd(),
                              *(list(c) if isinstance(c, list | tuple) else c
                                for c in self.env.cloud_init.runcmd)]
        comments = ["kiln: side-loads the foundation images into containerd before kubelet.",
                    "Generated by `python bake.py render`; do not edit."]
        if self.locator.secret:
            comments.append("SECRET: holds S3 read credentials (url_mode sigv4). Keep it 0600.")
        try:
            return cloudconfig.dump(document, tuple(comments))
        except cloudconfig.SerializeError as exc:
            raise RenderError(f"user-data: {exc}") from None

    def meta_data(self, hostname: str) -> str:
        return cloudconfig.dump({"instance-id": f"{self.env.name}-{hostname}",
                                 "local-hostname": hostname}, header="")

    def user_data_bytes(self, images: list[LockedImage], roles: tuple[str, ...] | None
                        ) -> tuple[bytes, bool]:
        """The user-data, gzip-compressed when over the environment's limit."""
        text = self.user_data(images, roles).encode()
        limit = self.env.node.user_data_limit
        if len(text) <= limit:
            return text, False
        packed = gzip.compress(text, mtime=0)
        if len(packed) > limit:
            raise RenderError(
                f"user-data is {len(text)} bytes, {len(packed)} gzip-compressed, over the "
                f"limit of {limit} (node.user_data_limit): give nodes fewer images per role, "
                "or raise the limit if the platform allows (EC2: 16384)")
        return packed, True

    def packer(self, sources: tuple[str, ...]) -> str:
        presigned = isinstance(self.locator, PresignedLocator)
        return self.template(
            "build.pkr.hcl.j2", env=self.env.name, prefix=PREFIX, sources=sources,
            node_files=[*NODE_FILES, *(["ca.pem"] if self.ca_pem else [])],
            has_ca=bool(self.ca_pem), presigned=presigned,
            ttl=getattr(self.locator, "ttl", 0),
        )


# -- writing --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, secret: bool, out: Rendered) -> None:
    write_atomic(path, data, 0o600 if secret else 0o644)
    out.files.append(path)


def _write_seed(path: Path, data: bytes, secret: bool, out: Rendered) -> None:
    """A plain write into the staging folder render_nodes swaps into place when complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    out.files.append(path)


def compact_shell(text: str) -> str:
    """A sh program without its whole-line comments after the header (up to `set -eu`, which
    --help prints); it has no here-documents (a test keeps it so): no line left out is data."""
    lines = text.splitlines(keepends=True)
    head = next((n for n, line in enumerate(lines) if line.startswith("set -eu")), 0)
    return "".join(lines[:head] + [line for line in lines[head:] if not line.lstrip(
        ).startswith("#") or line.lstrip().startswith("# shellcheck")])


def render(env: Environment, lock: Lock, dist: Path, locator: Locator, *,
           nodes: list[Node] | None = None, packer_dir: Path | None = None,
           allow_credentials_in_golden_image: bool = False,
           sign: Callable[[bytes], bytes] | None = None) -> Rendered:
    """Write node/, cloud-init/, nodes/<host>/ (with an inventory) and packer/ under dist/<env>."""
    golden_credentials = bool(env.packer_sources and locator.secret)
    if golden_credentials and not allow_credentials_in_golden_image:
        raise GoldenCredentialsError(golden_credentials_refusal(env) or
                                     f"environment {env.name!r}: credentials would be baked "
                                     f"into the golden image: pass {GOLDEN_FLAG} to accept")
    if not lock.images:
        raise RenderError(f"the lock of {env.name} lists no images: a node could never pass "
                          "its import (bake first)")
    out = Rendered(secret=locator.secret, private=locator.private)
    renderer = Renderer(env, lock, locator, sign=sign)
    base = dist / env.name
    secret = locator.private  # file modes: any credential, long-lived or not, is 0600
    try:
        node_dir = base / "node"
        _write(node_dir / "import-images", renderer.importer().encode(), False, out)
        os.chmod(node_dir / "import-images", 0o755)
        _write(node_dir / "images.data", renderer.data_file(list(lock.images)).encode(), secret,
               out)
        _write(node_dir / "kiln-import.service", renderer.unit().encode(), False, out)
        _write(node_dir / "10-kiln-import.conf", renderer.dropin().encode(), False, out)
        if renderer.ca_pem:
            _write(node_dir / "ca.pem", renderer.ca_pem.encode(), False, out)

        data, packed = renderer.user_data_bytes(list(lock.images), None)
        _write(base / "cloud-init" / "user-data", data, secret, out)
        if packed:
            out.warnings.append(f"{base / 'cloud-init' / 'user-data'} is over "
                                f"{env.node.user_data_limit} bytes: written gzip-compressed")

        if nodes is not None:
            render_nodes(renderer, base / "nodes", nodes, out)

        if env.packer_sources:
            render_packer(renderer, base / "packer", env.packer_sources, packer_dir, out)
            if isinstance(locator, PresignedLocator):
                out.warnings.append(
                    f"url_mode presigned with Packer: the URLs expire after "
                    f"{env.store.ttl_seconds if isinstance(env.store, S3Store) else 0} s; a "
                    "golden image booting later cannot re-fetch a missing image with them")
    except OSError as exc:
        raise RenderError(f"cannot write under {base}: {exc.strerror or exc}") from None
    if locator.secret:
        out.warnings.append(
            "SECRET: url_mode sigv4 wrote S3 credentials into images.data and user-data "
            f"under {base} (mode 0600). Use read-only credentials; never commit these files.")
    if golden_credentials:
        out.warnings.append(
            f"SECRET: {GOLDEN_FLAG}: the golden image built from {base / 'packer'} carries "
            "S3 credentials in its images.data: every copy and snapshot of that golden image "
            "can read the bucket until the credentials are revoked.")
    return out


def render_nodes(renderer: Renderer, folder: Path, nodes: list[Node], out: Rendered) -> None:
    """Per-node NoCloud seeds; nodes with the same roles share one rendered user-data.

    Written into ``nodes.new/`` and swapped in when complete: a failed render leaves the
    previous seeds as they were, and 10,000 nodes cost three file operations each.
    """
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cache: dict[tuple[tuple[str, ...], str | None], bytes] = {}
    try:
        for node in nodes:
            kind = (node.roles, node.platform)
            if kind not in cache:
                images, lacking = platforms.for_platform(
                    images_for_roles(renderer.lock, node.roles or None), node.platform)
                if lacking:
                    raise RenderError(f"node {node.hostname} (line {node.line}): the lock has "
                                      f"no {node.platform} image of {', '.join(lacking)}")
                cache[kind], _ = renderer.user_data_bytes(images, node.roles or None)
            target = staging / node.hostname
            target.mkdir()
            _write_seed(target / "user-data", cache[kind], renderer.locator.private, out)
            if not grammar.hostname_ok(node.hostname):
                raise RenderError(f"node host name {node.hostname!r} is not an RFC 1123 name")
            meta = renderer.meta_data(node.hostname)
            _write_seed(target / "meta-data", meta.encode(), False, out)
        os.sync()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    out.files[:] = [folder / p.relative_to(staging) if p.is_relative_to(staging) else p
                    for p in out.files]


def render_packer(renderer: Renderer, folder: Path, sources: tuple[str, ...],
                  packer_dir: Path | None, out: Rendered) -> None:
    """build.pkr.hcl plus the user's own *.pkr.hcl from packer/, which define the sources."""
    user_files = sorted(packer_dir.glob("*.pkr.hcl")) if packer_dir and packer_dir.is_dir() else []
    text = "\n".join(p.read_text() for p in user_files)
    for source in sources:
        kind, _, rest = source.partition(".")
        builder, _, name = rest.partition(".")
        if kind != "source" or not re.search(
                rf'source\s+"{re.escape(builder)}"\s+"{re.escape(name)}"', text):
            raise RenderError(f"packer source {source!r} is not defined in "
                              f"{packer_dir or 'packer/'}/*.pkr.hcl")
    if folder.exists():
        for stale in folder.glob("*.pkr.hcl"):
            stale.unlink()
    for path in user_files:
        target = folder / path.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        out.files.append(target)
    _write(folder / "build.pkr.hcl", renderer.packer(sources).encode(), False, out)
