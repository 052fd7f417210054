#!/usr/bin/env python3
"""Benchmark: the node importer against a naive script and the lower bound, in one run.

Five images of ~100 MB (real binaries, generated logs, random bytes) are baked by kiln into a
folder store served over HTTP on loopback. Each contender imports them into its own fresh
containerd:

- lower bound: `ctr images import` of the uncompressed tarballs, already on local disk;
- naive: per image, one after another: curl to a file, `sha256sum -c`, `zstd -d`, `ctr import`;
- kiln: the rendered import-images.

Then the downloading contenders again with the link capped at 1 Gbit/s (curl --limit-rate,
shared by the importer's parallel downloads).

    make bench-node          # or: .venv/bin/python bench/node_import.py [--images 5] [--mb 100]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.content import MB, REG, make_context  # noqa: E402
from kiln import config as config_mod  # noqa: E402
from kiln import localengine  # noqa: E402
from kiln.cli import main as kiln_main  # noqa: E402
from kiln.httpserve import serve  # noqa: E402
from kiln.lock import read as read_lock  # noqa: E402
from kiln.publish import decompress  # noqa: E402
from kiln.render import PlainLocator, render  # noqa: E402

GBIT = 125 * 1000 * 1000  # bytes per second

NAIVE = """\
set -eu
cd "$WORK"
while read -r name url sha; do
  curl -fsS $LIMIT -o "$name.zst" "$url"
  echo "$sha  $name.zst" | sha256sum -c --quiet -
  zstd -dq --rm "$name.zst" -o "$name.tar"
  ctr -n k8s.io images import "$name.tar" > /dev/null
  ctr -n k8s.io images label "$REF_PREFIX$name:v1" \
    io.cri-containerd.pinned=pinned > /dev/null
  rm -f "$name.tar"
done < "$LIST"
"""


def fresh_containerd(work: Path, label: str) -> localengine.Daemon:
    return localengine.start_containerd(work / f"ctd-{label}")


def drop(work: Path, daemon: localengine.Daemon, label: str) -> None:
    daemon.stop()
    subprocess.run(["umount", "-R", "-l", str(work / f"ctd-{label}")], capture_output=True,
                   check=False)
    shutil.rmtree(work / f"ctd-{label}", ignore_errors=True)


def run(label: str, work: Path, argv: list[str], env: dict[str, str]) -> float:
    daemon = fresh_containerd(work, label)
    try:
        subprocess.run(["sync"], check=True)
        start = time.perf_counter()
        done = subprocess.run(argv, env={**env, "CONTAINERD_ADDRESS": str(daemon.socket)},
                              capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"bench: {label} failed: {done.stderr[-2000:]}")
        listed = subprocess.run(["ctr", "--address", str(daemon.socket), "-n", "k8s.io",
                                 "images", "ls", "-q"], capture_output=True, text=True,
                                check=True).stdout
        assert listed.count(f"{REG}/foundation/") >= 1, listed
        return elapsed
    finally:
        drop(work, daemon, label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="size of each image")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-node-", dir="/var/tmp"))
    engine = localengine.start_containerd(work / "engine")
    dockerd = localengine.start_dockerd(work / "engine", engine)
    server: http.server.ThreadingHTTPServer | None = None
    try:
        lines = []
        mb = args.mb * MB
        print(f"bench: building {args.images} images of ~{args.mb} MB under {work} ...",
              flush=True)
        for i in range(args.images):
            name = f"app{i}"
            make_context(work / f"ctx-{name}", 100 + i, int(mb * 0.4), int(i * mb * 0.4),
                         int(mb * 0.3), int(mb * 0.3), None)
            lines.append(f"  - {{name: {name}, ref: {REG}/foundation/{name}:v1, "
                         f"build: ctx-{name}}}\n")
        config = work / "images.yaml"
        config.write_text("version: 1\nimages:\n" + "".join(lines) + "environments:\n"
                          f"  bench:\n    registry: {REG}\n"
                          "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
                          "    node: {parallel: 2}\n")
        os.environ["DOCKER_HOST"] = dockerd.address
        if kiln_main(["bake", "--env", "bench", "--config", str(config), "--quiet"]) != 0:
            raise SystemExit("bench: bake failed")
        lock = read_lock(work / "dist/bench/images.lock.json")
        assert lock is not None
        total = sum(i.uncompressed_size for i in lock.images)
        stored = sum(i.size for i in lock.images)
        print(f"bench: {len(lock.images)} images, {total / MB:.0f} MB uncompressed, "
              f"{stored / MB:.0f} MB stored (zstd -{lock.images[0].compression_level})",
              flush=True)
    finally:
        dockerd.stop()
        engine.stop()

    server = serve(work / "store")
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    env_cfg = config_mod.load(config).environment("bench")
    render(env_cfg, lock, work / "dist", PlainLocator(url))
    tars = work / "tars"
    tars.mkdir()
    listing = work / "naive.list"
    with listing.open("w") as out:
        for image in lock.images:
            blob = (work / "store" / image.key).read_bytes()
            (tars / f"{image.name}.tar").write_bytes(decompress(blob, image.compression))
            out.write(f"{image.name} {url}{image.key} {image.sha256}\n")
    naive_script = work / "naive.sh"
    naive_script.write_text(NAIVE)
    base_env = {**os.environ, "WORK": str(work / "naive"), "LIST": str(listing),
                "REF_PREFIX": f"{REG}/foundation/", "TMPDIR": str(work)}
    (work / "naive").mkdir()
    importer = ["sh", str(work / "dist/bench/node/import-images"), "--status",
                str(work / "status.json")]
    lower_argv = ["sh", "-c", 'for t in "$TARS"/*.tar; do ctr -n k8s.io images import "$t" '
                  '>/dev/null; done']
    results: dict[str, list[float]] = {}
    parallel = env_cfg.node.parallel
    for rnd in range(args.rounds):
        for label, argv, extra in (
            ("lower bound (ctr import of local tarballs)", lower_argv, {"TARS": str(tars)}),
            ("naive script, loopback", ["sh", str(naive_script)], {"LIMIT": ""}),
            ("kiln importer, loopback", importer, {}),
            ("naive script, 1 Gbit/s", ["sh", str(naive_script)],
             {"LIMIT": f"--limit-rate {GBIT}"}),
            ("kiln importer, 1 Gbit/s", importer,
             {"KILN_CURL_OPTS": f"--limit-rate {GBIT // parallel}"}),
        ):
            elapsed = run(label.split()[0], work, argv, {**base_env, **extra})
            results.setdefault(label, []).append(elapsed)
        print(f"bench: round {rnd + 1}: " + ", ".join(
            f"{k.split(',')[0].split(' (')[0]}{',' + k.split(',')[1] if ',' in k else ''} "
            f"{v[-1]:.1f}s" for k, v in results.items()), flush=True)
    server.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    best = {k: min(v) for k, v in results.items()}
    lower = best["lower bound (ctr import of local tarballs)"]
    print()
    print(f"{'measurement (best of rounds)':<46}{'seconds':>9}{'x lower':>9}")
    for label, value in best.items():
        print(f"{label:<46}{value:>9.2f}{value / lower:>9.2f}")
    loop = best["kiln importer, loopback"] / best["naive script, loopback"]
    capped = best["kiln importer, 1 Gbit/s"] / best["naive script, 1 Gbit/s"]
    print(f"{'kiln / naive, loopback (target <= 0.65)':<46}{loop:>18.2f}")
    print(f"{'kiln / lower bound, loopback (target <= 1.2)':<46}"
          f"{best['kiln importer, loopback'] / lower:>18.2f}")
    print(f"{'kiln / naive, 1 Gbit/s':<46}{capped:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
