#!/usr/bin/env python3
"""Benchmark: `kiln render --inventory` for 10,000 nodes (target: under 10 s).

The baseline, measured in the same run, is rendering one node's seed 10,000 times without
the per-role cache (what a naive loop over the inventory would do).

    make bench-render          # or: .venv/bin/python bench/render.py [--nodes 10000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kiln import config as config_mod  # noqa: E402
from kiln.inventory import load_inventory  # noqa: E402
from kiln.lock import Lock, LockedImage  # noqa: E402
from kiln.render import PlainLocator, Renderer, render  # noqa: E402

ROLES = (("control-plane",), ("worker",), ("worker", "gpu"), ("storage",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    # Beside a real dist/: file creation speed differs a lot between folders on one machine.
    (REPO / ".run").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-render-", dir=REPO / ".run"))
    try:
        (work / "images.yaml").write_text(
            "version: 1\nimages:\n  - {name: a, ref: 'r.example.com/a:1', build: x}\n"
            "environments:\n  prod:\n    registry: r.example.com\n"
            "    store: {type: dir, path: s, url: 'http://10.0.0.1/'}\n")
        env = config_mod.load(work / "images.yaml").environment("prod")
        images = tuple(
            LockedImage(f"img{i}", f"r.example.com/foundation/img{i}:v1", "sha256:" + "a" * 64,
                        "linux/amd64", "b" * 64, 10**8, 2 * 10**8, "zstd", 1,
                        "blobs/sha256/" + "b" * 64, ROLES[i % len(ROLES)], "build",
                        manifest_digests=(("linux/amd64", "sha256:" + "c" * 64),))
            for i in range(12))
        lock = Lock("prod", "r.example.com", images=images)
        inventory = work / "nodes.yaml"
        inventory.write_text("nodes:\n" + "".join(
            f"  - {{hostname: node-{i:05d}, roles: [{', '.join(ROLES[i % len(ROLES)])}]}}\n"
            for i in range(args.nodes)))
        start = time.perf_counter()
        nodes = load_inventory(inventory)
        render(env, lock, work / "dist", PlainLocator("http://10.0.0.1/"), nodes=nodes)
        kiln = time.perf_counter() - start
        written = sum(1 for _ in (work / "dist/prod/nodes").iterdir())

        sample = 200
        renderer = Renderer(env, lock, PlainLocator("http://10.0.0.1/"))
        start = time.perf_counter()
        for node in nodes[:sample]:
            renderer.user_data_bytes(list(images), node.roles)
        naive = (time.perf_counter() - start) / sample * len(nodes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'measurement':<52}{'seconds':>9}")
    print(f"{f'kiln render, {written} nodes (inventory load included)':<52}{kiln:>9.2f}")
    print(f"{'naive: every node rendered (extrapolated from 200)':<52}{naive:>9.2f}")
    print(f"{'  ratio kiln / naive':<52}{kiln / naive:>9.2f}")
    print(f"{'  target: under 10 s':<52}{'met' if kiln < 10 else 'MISSED':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
