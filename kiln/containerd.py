"""What a containerd holds, read through `ctr` (the same tool the node importer uses)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable

from kiln.errors import KilnError
from kiln.manifests import is_index, platform_manifest
from kiln.ports import (
    K8S_NAMESPACE,
    MANAGED_LABEL,
    NAME_LABEL,
    OWNER_LABEL,
    PIN_LABEL,
    ContainerdImage,
)


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
        """Every image in the namespace by ref (`ctr images ls`, parsed), its judged labels
        (JUDGED) confirmed through ctr's own filters: the LABELS column is ambiguous (another
        tool's label value may hold a comma, or a newline that reads as a row of its own)."""
        names = set(self.run("images", "ls", "-q").decode().split())
        rows = parse_rows(self.run("images", "ls").decode())
        found: dict[str, ContainerdImage] = {}
        doubled = set()
        for name, digest, labels in rows:
            if name in names:  # a row whose name is no image's is a label's text
                doubled.update({name} & found.keys())
                found[name] = ContainerdImage(name, digest, labels)
        for name in doubled:  # its own row comes first when asked for it alone
            _, digest, labels = parse_rows(self.run("images", "ls", f"name=={name}").decode())[0]
            found[name] = ContainerdImage(name, digest, labels)
        return self._confirmed(found)

    def _having(self, key: str, value: str) -> set[str]:
        return set(self.run("images", "ls", "-q", f'labels."{key}"=={value}').decode().split())

    def _confirmed(self, found: dict[str, ContainerdImage]) -> dict[str, ContainerdImage]:
        values = {(k, v) for image in found.values() for k, v in image.labels.items()
                  if k in JUDGED and k != NAME_LABEL and _filterable(v)}
        having = {pair: self._having(*pair) for pair in values}
        out = {}
        for name, image in found.items():
            labels = {k: v for k, v in image.labels.items() if k not in JUDGED}
            labels.update({k: v for (k, v), names in having.items() if name in names})
            if image.labels.get(NAME_LABEL) == name and name in self._having(NAME_LABEL, name):
                labels[NAME_LABEL] = name
            out[name] = ContainerdImage(name, image.manifest_digest, labels)
        return out

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


JUDGED = (PIN_LABEL, MANAGED_LABEL, OWNER_LABEL, NAME_LABEL)  # labels verify decides by


def _filterable(value: str) -> bool:
    """A value ctr's filter syntax takes unquoted (kiln's own values all are)."""
    return bool(value) and all(c.isalnum() or c in "._-:/@+" for c in value)


def parse_rows(out: str) -> list[tuple[str, str, dict[str, str]]]:
    """`ctr images ls` rows in order: name, target digest, labels as the column reads."""
    return [(ref, image.manifest_digest, image.labels)
            for ref, image in _rows(out)]


def parse_images(out: str) -> dict[str, ContainerdImage]:
    """`ctr images ls` by ref, as the table reads (see Ctr.images for what is trusted)."""
    return {ref: image for ref, image in _rows(out)}


def _rows(out: str) -> list[tuple[str, ContainerdImage]]:
    """`ctr images ls` output by ref. Its columns are aligned (Go's tabwriter): LABELS, the
    last, starts where its header does, and its value may hold spaces (another tool's label);
    labels are sorted ``k=v`` pairs joined by commas, so a part without ``=`` belongs to the
    value before it."""
    lines = out.splitlines()
    if not lines or "LABELS" not in lines[0]:
        return []
    at = lines[0].index("LABELS")
    found = []
    for line in lines[1:]:
        cols = line[:at].split()
        if len(cols) < 3:
            continue
        found.append((cols[0], ContainerdImage(cols[0], cols[2], _labels(line[at:].strip()))))
    return found


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    key = None
    for part in [] if text in ("", "-") else text.split(","):
        if "=" in part or key is None:
            key, _, value = part.partition("=")
            labels[key] = value
        else:
            labels[key] += "," + part
    return labels


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
