#!/usr/bin/env python3
"""Benchmark: the node importer against naive scripts and the lower bound, in one run.

Five images of ~100 MB (real binaries, generated logs, random bytes) are baked by kiln into a
folder store served over HTTP on loopback. Each contender imports them into its own fresh
containerd:

- lower bound: `ctr images import` of the `docker save` tarballs, uncompressed, on local disk;
- naive script: per image, one after another: curl to a file, `sha256sum -c`, `zstd -d`,
  `ctr import`, over `docker save | zstd` objects (the usual pipeline without kiln; the same
  zstd level as kiln's layers), served beside kiln's store;
- naive script on kiln's objects: the same loop over kiln's OCI archives (no `zstd -d`
  needed): how much comes from the stored format and how much from the importer;
- kiln: the rendered import-images.

- floor: kiln's own objects (the OCI archives the importer downloads) already on local disk,
  imported with `ctr images import` as the importer does (the same options, largest first, as
  many at once as the importer, a slot refilled as soon as an import ends): no download, no
  hash, no naming or pinning. The importer can only be slower than this.

Then the naive script and the importer again over a 1 Gbit/s link: they run in a network
namespace of their own whose veth is shaped to 1 Gbit/s (tbf, both ways), and the store is
served from another namespace (bench/fleetnet.py); their downloads share that link as on a
node. There the importer's bound is max(floor, bytes / link rate).

    make bench-node          # or: .venv/bin/python bench/node_import.py [--images 5] [--mb 100]
                             #     [--rounds 3] [--keep DIR: build once, reuse later]
                             #     [--only floor,kiln: a subset of the contenders]
                             #     [--parallel N: node.parallel, downloads at once]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import fleetnet  # noqa: E402
from bench.content import MB, REG, make_context  # noqa: E402
from kiln import config as config_mod  # noqa: E402
from kiln import localengine  # noqa: E402
from kiln.cli import main as kiln_main  # noqa: E402
from kiln.engine import DockerEngine  # noqa: E402
from kiln.httpserve import serve  # noqa: E402
from kiln.lock import read as read_lock  # noqa: E402
from kiln.render import PlainLocator, render  # noqa: E402

GBIT = 125 * 1000 * 1000  # bytes per second

NAIVE = """\
set -eu
cd "$WORK"
while read -r name url sha; do
  curl -fsS $LIMIT -o "$name.dl" "$url"
  echo "$sha  $name.dl" | sha256sum -c --quiet -
  if [ "$DECOMPRESS" = 1 ]; then zstd -dq --rm "$name.dl" -o "$name.tar"
  else mv "$name.dl" "$name.tar"; fi
  ctr -n k8s.io images import "$name.tar" > /dev/null
  ctr -n k8s.io images label "$REF_PREFIX$name:v1" \
    io.cri-containerd.pinned=pinned > /dev/null
  rm -f "$name.tar"
done < "$LIST"
"""
# kiln's objects from local disk, `imports` at once, largest first (the list is in that order)
FLOOR_SH = """\
set -eu
flag=""
if ctr images import --help 2>&1 | grep -q -- '--local'; then flag=--local; fi
export flag
xargs -P "$IMPORTS" -n 2 sh -c \
  'ctr -n k8s.io images import $flag --platform "$0" "$1" > /dev/null' < "$FLOOR_LIST"
"""
FLOOR = "floor (kiln's objects, local disk, ctr import)"
LOWER = "lower bound (ctr import of local tarballs)"
NAIVE_LOOP = "naive script, loopback"
NAIVE_KILN = "naive script on kiln's objects, loopback"
KILN_LOOP = "kiln importer, loopback"
NAIVE_GBIT = "naive script, 1 Gbit/s"
KILN_GBIT = "kiln importer, 1 Gbit/s"


@contextlib.contextmanager
def gbit_link(store: Path) -> Iterator[tuple[list[str], str]]:
    """A node namespace behind a 1 Gbit/s veth and the store served from another namespace:
    the command prefix that runs a program on that node, and the store's URL from there."""
    for stale in fleetnet.remove_stale():
        print(f"bench: removed {stale}, left by a killed run", flush=True)
    with fleetnet.Fleet() as net:  # (closing it stops the server in the store's namespace)
        net.build(1, fleetnet.Link(GBIT * 8), fleetnet.Link(10 * GBIT * 8))
        server = subprocess.Popen(net.exec(net.store, [
            sys.executable, str(REPO / "bench/fleetstore.py"), "serve", str(store),
            "--host", fleetnet.STORE_IP]), stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        line = server.stdout.readline().split()  # "listening PORT"
        if line[:1] != ["listening"]:
            raise SystemExit("bench: the store's HTTP server did not start in its namespace")
        yield net.exec(net.node(0), []), f"http://{fleetnet.STORE_IP}:{line[1]}/"


def fresh_containerd(work: Path, label: str) -> localengine.Daemon:
    return localengine.start_containerd(work / f"ctd-{label}")


def drop(work: Path, daemon: localengine.Daemon, label: str) -> None:
    daemon.stop()
    subprocess.run(["umount", "-R", "-l", str(work / f"ctd-{label}")], capture_output=True,
                   check=False)
    shutil.rmtree(work / f"ctd-{label}", ignore_errors=True)


def cpu_of(pid: int) -> float:
    """CPU seconds a process and its reaped children have used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_now(daemon: localengine.Daemon) -> tuple[float, float, float]:
    """CPU seconds so far: the contender (this process's children), containerd, and this
    process (the HTTP server's thread: on a real node the store is another machine)."""
    kids, mine = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(
        resource.RUSAGE_SELF)
    return (kids.ru_utime + kids.ru_stime, cpu_of(daemon.pid), mine.ru_utime + mine.ru_stime)


def run(label: str, work: Path, argv: list[str], env: dict[str, str]
        ) -> tuple[float, tuple[float, ...]]:
    """Seconds the contender took, and the CPU seconds it, containerd and the server used."""
    daemon = fresh_containerd(work, label)
    try:
        subprocess.run(["sync"], check=True)
        before = cpu_now(daemon)
        start = time.perf_counter()
        done = subprocess.run(argv, env={**env, "CONTAINERD_ADDRESS": str(daemon.socket)},
                              capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        cpu = tuple(b - a for a, b in zip(before, cpu_now(daemon), strict=True))
        if done.returncode != 0:
            raise SystemExit(f"bench: {label} failed: {done.stderr[-2000:]}")
        listed = subprocess.run(["ctr", "--address", str(daemon.socket), "-n", "k8s.io",
                                 "images", "ls", "-q"], capture_output=True, text=True,
                                check=True).stdout
        assert listed.count(f"{REG}/foundation/") >= 1, listed
        return elapsed, cpu
    finally:
        drop(work, daemon, label)


def build(work: Path, images: int, size_mb: int, config: Path) -> None:
    """Bake ``images`` images of ~``size_mb`` MB each into a folder store under ``work``."""
    engine = localengine.start_containerd(work / "engine")
    dockerd = localengine.start_dockerd(work / "engine", engine)
    try:
        lines = []
        mb = size_mb * MB
        print(f"bench: building {images} images of ~{size_mb} MB under {work} ...", flush=True)
        for i in range(images):
            name = f"app{i}"
            make_context(work / f"ctx-{name}", 100 + i, int(mb * 0.4), int(i * mb * 0.4),
                         int(mb * 0.3), int(mb * 0.3), None)
            lines.append(f"  - {{name: {name}, ref: {REG}/foundation/{name}:v1, "
                         f"build: ctx-{name}}}\n")
        config.write_text("version: 1\nimages:\n" + "".join(lines) + "environments:\n"
                          f"  bench:\n    registry: {REG}\n"
                          "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
                          "    node: {parallel: 2}\n")
        os.environ["DOCKER_HOST"] = dockerd.address
        if kiln_main(["bake", "--env", "bench", "--config", str(config), "--quiet"]) != 0:
            raise SystemExit("bench: bake failed")
        # the lower bound imports what `docker save` writes, uncompressed, from local disk;
        # the naive script downloads it zstd-compressed at kiln's level
        level = config_mod.load(config).environment("bench").compression.level
        engine_api = DockerEngine(dockerd.address)
        for folder in ("tars", "store/naive"):
            (work / folder).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            tar = work / "tars" / f"app{i}.tar"
            with tar.open("wb") as out:
                for chunk in engine_api.export(f"{REG}/foundation/app{i}:v1"):
                    out.write(chunk)
            subprocess.run(["zstd", "-q", f"-{level}", "-f", str(tar), "-o",
                            str(work / "store/naive" / f"app{i}.tar.zst")], check=True)
    finally:
        dockerd.stop()
        engine.stop()
        subprocess.run(["umount", "-R", "-l", str(work / "engine")], capture_output=True,
                       check=False)
        shutil.rmtree(work / "engine", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="size of each image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", metavar="LIST",
                        help="run only these contenders (first words: floor,lower,naive,kiln)")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="the importer's downloads at once (node.parallel; default: 2)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the images into DIR once and keep them for later runs")
    args = parser.parse_args()
    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="kiln-bench-node-", dir="/var/tmp"))
    config = work / "images.yaml"
    if not (work / "dist/bench/images.lock.json").exists():
        build(work, args.images, args.mb, config)
    lock = read_lock(work / "dist/bench/images.lock.json")
    assert lock is not None
    total = sum(i.uncompressed_size for i in lock.images)
    stored = sum(i.size for i in lock.images)
    print(f"bench: {len(lock.images)} images, {total / MB:.0f} MB uncompressed, "
          f"{stored / MB:.0f} MB stored (zstd -{lock.images[0].compression_level})",
          flush=True)

    server = serve(work / "store")
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    env_cfg = config_mod.load(config).environment("bench")
    if args.parallel:
        env_cfg = replace(env_cfg, node=replace(env_cfg.node, parallel=args.parallel))
    render(env_cfg, lock, work / "dist", PlainLocator(url))
    naive_digests = {image.name: hashlib.sha256(
        (work / "store/naive" / f"{image.name}.tar.zst").read_bytes()).hexdigest()
        for image in lock.images}

    def naive_list_at(base: str, path: Path) -> Path:
        """The naive script's list: each image's `docker save | zstd` object under ``base``."""
        path.write_text("".join(f"{i.name} {base}naive/{i.name}.tar.zst {naive_digests[i.name]}\n"
                                for i in lock.images))
        return path

    naive_list = naive_list_at(url, work / "naive.list")
    kiln_list = work / "naive-kiln.list"
    kiln_list.write_text("".join(f"{i.name} {url}{i.key} {i.sha256}\n" for i in lock.images))
    naive = ["sh", str(work / "naive.sh")]
    (work / "naive.sh").write_text(NAIVE)
    base_env = {**os.environ, "WORK": str(work / "naive"), "REF_PREFIX": f"{REG}/foundation/",
                "TMPDIR": str(work), "LIMIT": "", "LIST": str(naive_list), "DECOMPRESS": "1"}
    (work / "naive").mkdir(exist_ok=True)
    importer = ["sh", str(work / "dist/bench/node/import-images"), "--status",
                str(work / "status.json")]
    lower_argv = ["sh", "-c", 'for t in "$TARS"/*.tar; do ctr -n k8s.io images import "$t" '
                  '>/dev/null; done']
    floor_list = work / "floor.list"
    floor_list.write_text("".join(
        f"{image.platform} {work / 'store' / image.key}\n"
        for image in sorted(lock.images, key=lambda i: (-i.size, i.name))))
    (work / "floor.sh").write_text(FLOOR_SH)
    parallel = env_cfg.node.parallel
    imports = os.environ.get("KILN_IMPORTS", "2")
    contenders = [
        (FLOOR, ["sh", str(work / "floor.sh")], {"FLOOR_LIST": str(floor_list),
                                                  "IMPORTS": imports}),
        (LOWER, lower_argv, {"TARS": str(work / "tars")}),
        (NAIVE_LOOP, naive, {}),
        (NAIVE_KILN, naive, {"LIST": str(kiln_list), "DECOMPRESS": "0"}),
        (KILN_LOOP, importer, {}),
    ]
    link = contextlib.ExitStack()
    results: dict[str, list[float]] = {}
    cpus: dict[str, list[tuple[float, ...]]] = {}
    try:
        if not args.only or {"naive", "kiln"} & set(args.only.split(",")):
            # the same over a 1 Gbit/s veth, the store in another namespace
            node, link_url = link.enter_context(gbit_link(work / "store"))
            render(env_cfg, lock, work / "dist-link", PlainLocator(link_url))
            link_naive = naive_list_at(link_url, work / "naive-link.list")
            contenders += [
                (NAIVE_GBIT, [*node, *naive], {"LIST": str(link_naive)}),
                (KILN_GBIT, [*node, "sh", str(work / "dist-link/bench/node/import-images"),
                             "--status", str(work / "status.json")], {}),
            ]
        if args.only:
            contenders = [c for c in contenders if c[0].split()[0] in args.only.split(",")]
        for rnd in range(args.rounds):
            for label, argv, extra in contenders:
                elapsed, cpu = run(label.split()[0], work, argv, {**base_env, **extra})
                results.setdefault(label, []).append(elapsed)
                cpus.setdefault(label, []).append(cpu)
            print(f"bench: round {rnd + 1}: "
                  + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()), flush=True)
    finally:
        server.shutdown()
        link.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    # no byte is imported before its object's sha256 is checked: the first import cannot start
    # before the smallest object has arrived, at one download's share of the link
    first = min(i.size for i in lock.images) / (GBIT / parallel)
    report(results, stored, first)
    print(f"{'CPU seconds (median of rounds)':<50}{'client':>8}{'containerd':>11}{'server':>8}")
    print("  (server: the loopback store's; the 1 Gbit/s rows' store is another process, not "
          "counted)")
    for label, values in cpus.items():
        print(f"{label:<50}" + "".join(
            f"{statistics.median(v[i] for v in values):>{w}.2f}"
            for i, w in enumerate((8, 11, 8))))
    return 0


def report(results: dict[str, list[float]], stored: int, first: float) -> None:
    """Best and median of each contender, then the ratios: best over best, and the median of
    the ratios paired by round (both measured in the same round, under the same load).
    ``first``: seconds before the first object can have arrived at 1 Gbit/s."""
    print()
    print(f"{'measurement':<50}{'best s':>8}{'median s':>10}")
    for label, values in results.items():
        print(f"{label:<50}{min(values):>8.2f}{statistics.median(values):>10.2f}")
    link = stored / GBIT
    print(f"{'bytes / 1 Gbit/s':<50}{link:>8.2f}")
    print(f"{'smallest object / one download at 1 Gbit/s':<50}{first:>8.2f}")
    ratios = (
        ("kiln / floor, loopback (target <= 1.05)", KILN_LOOP, FLOOR, 0.0, 0.0),
        ("kiln / max(floor, bytes/link), 1 Gbit/s (<= 1.05)", KILN_GBIT, FLOOR, link, 0.0),
        ("kiln / (floor + first object), 1 Gbit/s", KILN_GBIT, FLOOR, link, first),
        ("kiln / naive, loopback (target <= 0.65)", KILN_LOOP, NAIVE_LOOP, 0.0, 0.0),
        ("kiln / lower bound, loopback (target <= 1.2)", KILN_LOOP, LOWER, 0.0, 0.0),
        ("kiln / naive on kiln's objects, loopback", KILN_LOOP, NAIVE_KILN, 0.0, 0.0),
        ("kiln / naive, 1 Gbit/s", KILN_GBIT, NAIVE_GBIT, 0.0, 0.0),
    )
    print(f"{'ratio':<50}{'best':>8}{'median':>10}")
    for label, top, bottom, least, plus in ratios:
        if top not in results or bottom not in results:
            continue
        paired = [t / max(b + plus, least)
                  for t, b in zip(results[top], results[bottom], strict=True)]
        best = min(results[top]) / max(min(results[bottom]) + plus, least)
        print(f"{label:<50}{best:>8.2f}{statistics.median(paired):>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
