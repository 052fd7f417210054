"""The upstream edge of bake, through skopeo: what a registry serves for a reference, and
copies of images exactly as they are served (pull sources, OCI archives) into an OCI layout
folder, from which kiln/copied.py writes the stored archive. No Docker engine.

`skopeo copy --preserve-digests`: skopeo fails rather than change a manifest or a layer
(except for the opt-in recompression of a pull source, kiln/recompressed.py).
Credentials and CAs of upstream registries are skopeo's standard ones, never images.yaml's:
auth from `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` or
`~/.docker/config.json` (`skopeo login`, `docker login`); a registry's CA from a
`certs.d/HOST:PORT/ca.crt` (`~/.config/containers/certs.d`, `/etc/containers/certs.d`,
`/etc/docker/certs.d`).
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from kiln.errors import Cancelled
from kiln.ports import UpstreamError

NOT_FOUND = re.compile(r"manifest unknown|not found|404", re.IGNORECASE)
RETRIES = "2"  # skopeo's own retries of a failed request (a registry's hiccup)


def reason(stderr: str) -> str:
    """skopeo's last error line, without its logging frame (`time=… level=fatal msg="…"`)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "failed"
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', lines[-1])
    text = found.group(1).replace('\\"', '"') if found else lines[-1]
    # the caller names the image already: drop skopeo's restatement of it
    return re.sub(r'^(?:Error parsing image name|initializing source) "?[^" ]*"?: ', "", text)


class SkopeoUpstream:
    def _run(self, argv: list[str], what: str, cancel: threading.Event | None = None) -> bytes:
        """Run skopeo; a set ``cancel`` ends it (Ctrl-C, SIGTERM: the bake rolls back)."""
        try:
            proc = subprocess.Popen(["skopeo", *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UpstreamError("skopeo is not installed (apt-get install skopeo)") from None
        with proc:
            result: list[tuple[bytes, bytes]] = []
            reader = threading.Thread(target=lambda: result.append(proc.communicate()),
                                      daemon=True)
            reader.start()
            while reader.is_alive():
                reader.join(0.2)
                if cancel is not None and cancel.is_set() and reader.is_alive():
                    proc.terminate()
                    reader.join()
                    raise Cancelled("interrupted")
        out, err = result[0] if result else (b"", b"")
        if proc.returncode != 0:
            raise UpstreamError(f"{what}: {reason(err.decode(errors='replace'))}")
        return out

    def manifest(self, ref: str) -> bytes:
        return self._run(["inspect", "--raw", "--retry-times", RETRIES, f"docker://{ref}"],
                         f"cannot read {ref}")

    def config(self, ref: str) -> bytes:
        return self._run(["inspect", "--config", "--raw", "--retry-times", RETRIES,
                          f"docker://{ref}"], f"cannot read the config of {ref}")

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        keep = ["--preserve-digests"] if compression is None else [
            "--dest-compress-format", compression[0],
            "--dest-compress-level", str(compression[1])]
        self._run(["copy", "--quiet", *keep, "--retry-times", RETRIES,
                   f"docker://{ref}", f"oci:{layout}:image"], f"copy of {ref} failed", cancel)

    def copy_archive(self, archive: Path, layout: Path, cancel: threading.Event | None = None,
                     platform: str | None = None) -> None:
        # of an index, skopeo copies the image of the platform it is told (default: its own)
        chosen = (platform or "").split("/")
        overrides = [*(["--override-os", chosen[0], "--override-arch", chosen[1]]
                       if len(chosen) > 1 else []),
                     *(["--override-variant", chosen[2]] if len(chosen) > 2 else [])]
        self._run([*overrides, "copy", "--quiet", "--preserve-digests",
                   f"oci-archive:{archive}", f"oci:{layout}:image"],
                  f"copy of the OCI archive {archive} failed", cancel)

    def copy_signature(self, repository: str, tag: str, layout: Path,
                       cancel: threading.Event | None = None) -> bool:
        """The signature artifact ``repository:tag`` (cosign's ``sha256-H.sig``) as served,
        into ``layout``; False when the registry has no such tag (the image is not signed)."""
        try:
            self._run(["copy", "--quiet", "--preserve-digests", "--retry-times", RETRIES,
                       f"docker://{repository}:{tag}", f"oci:{layout}:signature"],
                      f"cannot read the signature {repository}:{tag}", cancel)
        except UpstreamError as exc:
            if NOT_FOUND.search(str(exc)):
                return False
            raise
        return True
