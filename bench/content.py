"""Image content for the benchmarks: real binaries, generated logs and random bytes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

MB = 1 << 20
REG = "registry.example.com"
WORDS = (
    "container", "image", "layer", "registry", "node", "kubelet", "import", "bootstrap",
    "cluster", "config", "value", "error", "warning", "info", "debug", "request", "response",
    "token", "identity", "service", "deploy", "label", "namespace", "volume", "secret",
    "network", "policy", "route", "gateway", "proxy", "metrics", "trace", "span",
)


def system_files(limit: int, skip: int = 0) -> list[Path]:
    """Real binaries and libraries, in a stable order, about ``limit`` bytes of them."""
    picked, total, seen = [], 0, 0
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib/python3", "/usr/share"):
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
            if size < 4096 or size > 8 * MB:
                continue
            seen += size
            if seen <= skip:
                continue
            picked.append(path)
            total += size
            if total >= limit:
                return picked
    return picked


def text_blob(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = (f"{rng.randrange(10**9):09d} {rng.choice(('INFO', 'WARN', 'DEBUG'))} "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 16)))
                + f" id={rng.getrandbits(64):016x}\n")
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def make_context(folder: Path, seed: int, binaries: int, skip: int, text: int, noise: int,
                 base: str | None) -> Path:
    rng = random.Random(seed)
    root = folder / "rootfs"
    (root / "opt/bin").mkdir(parents=True)
    for i, path in enumerate(system_files(binaries, skip)):
        shutil.copyfile(path, root / "opt/bin" / f"{i:05d}-{path.name}")
    (root / "var/log").mkdir(parents=True)
    for i in range(max(1, text // (4 * MB))):
        (root / "var/log" / f"app-{i}.log").write_bytes(text_blob(rng, min(4 * MB, text)))
    (root / "opt/data").mkdir(parents=True)
    for i in range(max(1, noise // (8 * MB))):
        (root / "opt/data" / f"blob-{i}.bin").write_bytes(rng.randbytes(min(8 * MB, noise)))
    (folder / "Dockerfile").write_text(f"FROM {base or 'scratch'}\nCOPY rootfs/ /\n")
    return folder


