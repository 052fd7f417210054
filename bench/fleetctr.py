#!/usr/bin/env python3
"""The archive check of bench/fleet-ctr.sh (the stand-in for `ctr images import`), and the
record the real-containerd nodes' shim keeps. Standard library only (run as `python3 -I`).

    fleetctr.py check [--platform P] FILE   # stand-in: check all of FILE, record it as imported
    fleetctr.py record FILE                 # shim: record FILE's sha256 and ref, check nothing

Environment: FLEET_CTR_STATE (the node's folder: imports.jsonl, images/, content/) and
FLEET_EXPECT (JSON: ref -> the lock's sha256 of that image's object).

`check` reads the whole archive as a tar stream and fails (exit 1, `ctr: ...` on stderr, as
ctr would) unless it holds `oci-layout` and `index.json`, every `blobs/sha256/<hex>` hashes to
its name, and each manifest that index.json names is there with its config and layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import IO, Any

BLOBS = "blobs/sha256/"
NAME = "io.containerd.image.name"


class Hashing:
    """A file read through sha256 (tarfile's stream mode reads it exactly once)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def scan(path: Path) -> tuple[str, dict[str, bytes], set[str], list[str]]:
    """The file's sha256, its small members, every member's name, and what is wrong."""
    problems: list[str] = []
    small: dict[str, bytes] = {}
    seen: set[str] = set()
    with path.open("rb") as raw:
        stream = Hashing(raw)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = member.name.lstrip("./")
                    if not member.isfile():
                        continue
                    got = hashlib.sha256()
                    body = tar.extractfile(member)
                    kept = b""
                    while chunk := body.read(1 << 20):
                        got.update(chunk)
                        if member.size <= 1 << 20:
                            kept += chunk
                    if name.startswith(BLOBS) and got.hexdigest() != name[len(BLOBS):]:
                        problems.append(f"{name} hashes to sha256:{got.hexdigest()}")
                    seen.add(name)
                    if member.size <= 1 << 20:
                        small[name] = kept
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"not a complete tar: {exc}")
        stream.drain()
    return stream.digest.hexdigest(), small, seen, problems


def manifests(small: dict[str, bytes], seen: set[str], problems: list[str]
              ) -> list[tuple[str, str, bytes]]:
    """(ref, manifest digest, manifest bytes) for each image index.json names."""
    for needed in ("oci-layout", "index.json"):
        if needed not in small:
            problems.append(f"no {needed}")
    if "index.json" not in small:
        return []
    found = []
    for entry in json.loads(small["index.json"]).get("manifests", []):
        digest = entry["digest"]
        body = small.get(BLOBS + digest.split(":", 1)[1])
        if body is None:
            problems.append(f"index.json names {digest}, not in the archive")
            continue
        manifest = json.loads(body)
        for blob in [manifest["config"], *manifest.get("layers", [])]:
            if BLOBS + blob["digest"].split(":", 1)[1] not in seen:
                problems.append(f"manifest {digest} needs {blob['digest']}, not there")
        found.append((entry.get("annotations", {}).get(NAME, ""), digest, body))
    return found


def note(state: Path, entry: dict[str, Any]) -> None:
    with (state / "imports.jsonl").open("a") as out:
        out.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    mode, path = argv[0], Path(argv[-1])
    state = Path(os.environ["FLEET_CTR_STATE"])
    for sub in ("images", "content"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    expect = json.loads(Path(os.environ["FLEET_EXPECT"]).read_text())
    sha, small, seen, problems = scan(path)
    try:
        images = manifests(small, seen, problems)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        images = []
        problems.append(f"index.json or a manifest is malformed: {exc!r}")
    refs = [ref for ref, _, _ in images]
    verified = bool(refs) and all(expect.get(ref) == sha for ref in refs)
    note(state, {"time": time.time(), "mode": mode, "refs": refs, "sha256": sha,
                 "verified": verified, "problems": problems})
    if mode == "record":
        return 0
    if problems:
        sys.stderr.write(f"ctr: failed to import {path}: {problems[0]}\n")
        return 1
    for ref, digest, body in images:
        (state / "content" / digest).write_bytes(body)
        key = ref.replace("/", "_").replace(":", "_").replace("@", "_")
        (state / "images" / key).write_text(
            f"{ref} application/vnd.oci.image.manifest.v1+json {digest} {path.stat().st_size} "
            "linux/amd64 -\n")
        print(f"unpacking {ref} ({digest})...done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
