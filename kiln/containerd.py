"""What a containerd holds, read through `ctr` (the same tool the node importer uses)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable

from kiln.errors import KilnError
from kiln.manifests import is_index, platform_manifest
from kiln.ports import K8S_NAMESPACE, ContainerdImage


class Ctr:
    """A thin client over `ctr --address ADDRESS -n NAMESPACE`."""

    def __init__(self, address: str, namespace: str = K8S_NAMESPACE) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace

    def run(self, *args: str, stdin: bytes | None = None) -> bytes:
        argv = ["ctr", "--address", self.address, "-n", self.namespace, *args]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
        except FileNotFoundError:
            raise KilnError("ctr is not installed (apt-get install containerd)") from None
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise KilnError(f"ctr {args[0]} {args[1] if len(args) > 1 else ''}: "
                            f"{reason[-1] if reason else 'exit ' + str(done.returncode)}")
        return done.stdout

    def images(self) -> dict[str, ContainerdImage]:
        """Every image in the namespace by ref (`ctr images ls`, parsed)."""
        out = self.run("images", "ls").decode()
        found = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 6:
                continue
            labels: dict[str, str] = {}
            if cols[-1] != "-":
                for pair in cols[-1].split(","):
                    key, _, value = pair.partition("=")
                    labels[key] = value
            found[cols[0]] = ContainerdImage(cols[0], cols[2], labels)
        return found

    def image_id(self, manifest_digest: str, platform: str = "linux/amd64") -> str:
        """The config digest (the image ID Docker reports) behind a manifest or index."""
        doc = json.loads(self.run("content", "get", manifest_digest))
        if is_index(doc):  # take the platform's manifest
            digest = platform_manifest(doc, platform)
            if digest is None:
                raise KilnError(f"{manifest_digest}: no manifest for {platform}")
            return self.image_id(digest, platform)
        return str(doc["config"]["digest"])

    def in_namespace(self, namespace: str) -> Ctr:
        return Ctr(self.address, namespace)

    def import_stream(self, chunks: Iterable[bytes]) -> None:
        """`ctr images import -` fed from ``chunks`` (an uncompressed archive), streaming."""
        argv = ["ctr", "--address", self.address, "-n", self.namespace, "images", "import", "-"]
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) as proc:
            assert proc.stdin is not None and proc.stderr is not None
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # ctr gave up: its exit status and stderr say why
            finally:
                proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise KilnError(f"ctr images import: {err.splitlines()[-1] if err else 'failed'}")


class CtrContainerd:
    """The view `kiln verify` needs, over every namespace of one containerd."""

    def __init__(self, address: str) -> None:
        self.ctr = Ctr(address)

    def namespaces(self) -> list[str]:
        return self.ctr.run("namespaces", "ls", "-q").decode().split()

    def images(self, namespace: str) -> dict[str, ContainerdImage]:
        return self.ctr.in_namespace(namespace).images()

    def image_id(self, namespace: str, manifest_digest: str, platform: str) -> str:
        return self.ctr.in_namespace(namespace).image_id(manifest_digest, platform)
