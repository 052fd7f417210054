"""The registry edge for day 2, through skopeo: what a ref serves (manifest digest, image
ID), and pushing a stored archive with its digests kept.

`push` copies the stored archive with `--preserve-digests`: the registry serves the very
manifest (and so the manifest digest) the nodes imported, or the push fails.
Credentials: KILN_REGISTRY_USERNAME / KILN_REGISTRY_PASSWORD (written to a 0600 auth file for
skopeo, never onto a command line), else skopeo's standard lookup, which includes Docker's
~/.docker/config.json.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln import refs
from kiln.errors import KilnError
from kiln.manifests import INDEX_TYPES, is_index, platform_manifest
from kiln.upstream import reason as skopeo_reason

MAX_INDEX = 1 << 22  # bytes of an archive's index.json read
INSPECT_TIMEOUT = 60  # seconds: a registry that does not answer is not waited for longer
USER_ENV, PASSWORD_ENV = "KILN_REGISTRY_USERNAME", "KILN_REGISTRY_PASSWORD"


def one_image(archive: Path) -> None:
    """An archive that also names the upstream index (for nodes: kiln/copied.py) is rewritten
    in place to list its image only: skopeo takes an archive's image by name only when its
    manifest is an OCI one, so it must be the one listed (the index's blob stays, unlisted).
    The archive is kiln's own, its sha256 checked; anything else in it is refused."""
    try:
        with tarfile.open(archive) as tar:
            found = [m for m in tar.getmembers() if m.name == "index.json"]
            if len(found) != 1 or not found[0].isreg() or found[0].size > MAX_INDEX:
                raise RegistryError(f"{archive.name}: not one index.json of kiln's")
            stream = tar.extractfile(found[0])
            assert stream is not None
            index = json.loads(stream.read())
        manifests = [m for m in index["manifests"] if m.get("mediaType") not in INDEX_TYPES]
        if len(manifests) == len(index["manifests"]):
            return
        index["manifests"] = manifests
        data = json.dumps(index, sort_keys=True).encode()
        rewritten = archive.with_name(archive.name + ".one")
        with tarfile.open(archive) as tar, tarfile.open(rewritten, "w") as out:
            for member in tar:
                if member.name == "index.json":
                    member.size = len(data)
                    out.addfile(member, io.BytesIO(data))
                else:
                    out.addfile(member, tar.extractfile(member) if member.isreg() else None)
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{archive.name}: not an archive of kiln's ({exc})") from None
    os.replace(rewritten, archive)


class RegistryError(KilnError):
    pass


@dataclass(frozen=True)
class ServedImage:
    """What a registry serves for a ref and a platform."""

    manifest_digest: str  # sha256 of the manifest bytes as served
    image_id: str  # the config digest that manifest names
    index_digest: str | None = None  # when the ref resolves to an index


class Registry:
    def __init__(self, host: str, ca_bundle: Path | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.host = host
        environ = dict(os.environ) if environ is None else environ
        self.work = Path(tempfile.mkdtemp(prefix="kiln-registry-"))
        self.cert_dir: Path | None = None
        if ca_bundle is not None:
            self.cert_dir = self.work / "certs"
            self.cert_dir.mkdir()
            try:
                shutil.copyfile(ca_bundle, self.cert_dir / "ca.crt")
            except OSError as exc:
                shutil.rmtree(self.work, ignore_errors=True)
                raise RegistryError(f"cannot read the registry CA {ca_bundle}: "
                                    f"{exc.strerror or exc}") from None
        self.authfile: Path | None = None
        user, password = environ.get(USER_ENV), environ.get(PASSWORD_ENV)
        if user and password:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.authfile = self.work / "auth.json"
            fd = os.open(self.authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"auths": {host: {"auth": token}}}, out)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def _skopeo(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise RegistryError("skopeo is not installed (apt-get install skopeo)") from None

    def _inspect(self, ref: str) -> bytes | None:
        """The manifest or index ``ref`` resolves to, as served; None when there is none."""
        argv = ["inspect", "--raw"]
        if self.cert_dir:
            argv += ["--cert-dir", str(self.cert_dir)]
        if self.authfile:
            argv += ["--authfile", str(self.authfile)]
        try:
            done = subprocess.run(["skopeo", *argv, f"docker://{ref}"], capture_output=True,
                                  check=False, timeout=INSPECT_TIMEOUT)
        except FileNotFoundError:
            raise RegistryError("skopeo is not installed (apt-get install skopeo)") from None
        except subprocess.TimeoutExpired:
            raise RegistryError(f"{ref}: no answer in {INSPECT_TIMEOUT}s") from None
        if done.returncode != 0:
            reason = skopeo_reason(done.stderr.decode(errors="replace"))
            if "manifest unknown" in reason or "not found" in reason.lower():
                return None
            raise RegistryError(f"{ref}: {reason}")
        return done.stdout

    def digest(self, ref: str) -> str | None:
        """The digest of what ``ref`` serves (a signature artifact's manifest), or None."""
        raw = self._inspect(ref)
        return None if raw is None else "sha256:" + hashlib.sha256(raw).hexdigest()

    def served(self, ref: str, platform: str = "linux/amd64") -> ServedImage | None:
        """The manifest digest and image ID the registry serves for ``ref`` and ``platform``
        (through its index when the ref names one); None when it has no such ref."""
        return self.served_from(ref, self._inspect(ref), platform)

    def served_from(self, ref: str, raw: bytes | None, platform: str) -> ServedImage | None:
        """As served(), from the document ``raw`` the registry served for ``ref`` (None: no
        such ref): an index read once answers for each of its platforms."""
        if raw is None:
            return None
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        try:
            doc = json.loads(raw)
            if not is_index(doc):
                return ServedImage(digest, str(doc["config"]["digest"]))
            chosen = platform_manifest(doc, platform)
            if chosen is None:
                return None
            inner = self.served(f"{refs.parse(ref).repository}@{chosen}", platform)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"{ref}: the registry served no image manifest ({exc})"
                                ) from None
        return None if inner is None else ServedImage(inner.manifest_digest, inner.image_id,
                                                      digest)

    def push(self, archive: Path, ref: str) -> None:
        """`skopeo copy --preserve-digests oci-archive:ARCHIVE docker://REF`: no engine.

        The stored archive holds one image (named ``ref``; skopeo's OCI reader finds an image
        by name only when its manifest is an OCI one, not a Docker one as many registries
        serve, so the archive's only image is taken): its manifest and compressed layers go
        as they are, and the registry serves the bytes the nodes imported.
        """
        argv = ["copy", "--quiet", "--preserve-digests"]
        if self.cert_dir:
            argv += ["--dest-cert-dir", str(self.cert_dir)]
        if self.authfile:
            argv += ["--dest-authfile", str(self.authfile)]
        one_image(archive)
        done = self._skopeo(*argv, f"oci-archive:{archive}", f"docker://{ref}")
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            raise RegistryError(f"push of {ref} failed: {reason}")

    def manifest(self, ref: str) -> bytes | None:
        """The manifest (or index) ``ref`` resolves to, as served; None when there is none."""
        return self._inspect(ref)

    def push_index(self, layout: Path, ref: str) -> None:
        """`skopeo copy --multi-arch index-only --preserve-digests oci:LAYOUT:image
        docker://REF`: the index alone, byte for byte (its manifests were pushed by digest
        before: a registry refuses an index naming a manifest it does not hold)."""
        argv = ["copy", "--quiet", "--multi-arch", "index-only", "--preserve-digests"]
        if self.cert_dir:
            argv += ["--dest-cert-dir", str(self.cert_dir)]
        if self.authfile:
            argv += ["--dest-authfile", str(self.authfile)]
        done = self._skopeo(*argv, f"oci:{layout}:image", f"docker://{ref}")
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            raise RegistryError(f"push of the index of {ref} failed: {reason}")
