"""The registry edge for day 2, through skopeo: read a ref's image ID, push a stored archive.

Image IDs are compared, never manifest digests: an archive imported into containerd and the
same image pushed to a registry have different manifests but the same config digest.
Credentials: KILN_REGISTRY_USERNAME / KILN_REGISTRY_PASSWORD (written to a 0600 auth file for
skopeo, never onto a command line), else skopeo's standard lookup, which includes Docker's
~/.docker/config.json.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from kiln import refs
from kiln.errors import KilnError
from kiln.manifests import is_index, platform_manifest

USER_ENV, PASSWORD_ENV = "KILN_REGISTRY_USERNAME", "KILN_REGISTRY_PASSWORD"


class RegistryError(KilnError):
    pass


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

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        argv = ["inspect", "--raw"]
        if self.cert_dir:
            argv += ["--cert-dir", str(self.cert_dir)]
        if self.authfile:
            argv += ["--authfile", str(self.authfile)]
        done = self._skopeo(*argv, f"docker://{ref}")
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            if "manifest unknown" in reason or "not found" in reason.lower():
                return None
            raise RegistryError(f"{ref}: {reason}")
        return dict(json.loads(done.stdout))

    def image_id(self, ref: str, platform: str = "linux/amd64") -> str | None:
        """The config digest the registry serves for ``ref``; None when it has no such ref."""
        manifest = self._inspect(ref)
        if manifest is None:
            return None
        if is_index(manifest):
            digest = platform_manifest(manifest, platform)
            if digest is None:
                return None
            return self.image_id(f"{refs.parse(ref).repository}@{digest}", platform)
        return str(manifest["config"]["digest"])

    def push(self, archive: Path, ref: str) -> None:
        """`skopeo copy oci-archive:ARCHIVE:REF docker://REF`: no Docker engine involved.

        The stored archive names each image by its full ref, and skopeo copies its manifest
        and compressed layers as they are: the registry serves the bytes the nodes imported.
        """
        argv = ["copy", "--quiet"]
        if self.cert_dir:
            argv += ["--dest-cert-dir", str(self.cert_dir)]
        if self.authfile:
            argv += ["--dest-authfile", str(self.authfile)]
        done = self._skopeo(*argv, f"oci-archive:{archive}:{ref}", f"docker://{ref}")
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            raise RegistryError(f"push of {ref} failed: {reason}")
