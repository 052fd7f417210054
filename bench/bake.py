#!/usr/bin/env python3
"""Benchmark: `kiln bake` against `docker save IMAGE | aws s3 cp - s3://...` on one endpoint.

Everything runs here, in one process tree: a private containerd + dockerd, a single-node Ceph
whose radosgw is the S3 server on loopback (kiln.cephdev), and a docker-registry (plain HTTP)
the images are pulled from (pinned by digest; kiln copies them from there with skopeo, as
served). Three contenders for the same images each round:
- the engine baseline: `docker save IMAGE | aws s3 cp -` of images the engine already has;
- the pull-source baseline (issue 13): `docker pull PIN` into an engine that does not have
  them, then `docker save | aws s3 cp -`;
- the floor: a bare `skopeo copy docker://PIN oci-archive:FILE` of each image to local disk
  (the images at once, as kiln's `--jobs` does), storing nothing; and the same followed by
  `aws s3 cp --recursive` of the archives into the store (copied, then stored: kiln's work).
Three images of ~165 MB each share a ~100 MB base; their layers mix real system binaries,
generated text and random bytes (partly compressible, as real images are).

    make bench-bake            # or: .venv/bin/python bench/bake.py [--rounds 2] [--scale 1.0]
    make bench-bake BENCH_ARGS="--only-pull --rounds 5"    # the pull-source case alone

Prints each measurement and the ratios against the awscli pipeline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import docker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.content import MB, REG, make_context  # noqa: E402
from kiln import cephdev, localengine  # noqa: E402
from kiln.cephdev import free_port  # noqa: E402

CPU: dict[str, float] = {}  # seconds of CPU per party, summed over the current contender


def daemon_cpu() -> dict[str, float]:
    """CPU seconds used so far by the servers both contenders share."""
    found: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = next((n for n in ("radosgw", "ceph-osd", "dockerd", "containerd") if
                     any(n.encode() in part for part in cmd[:3])), None)
        if name:
            found[name] = found.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return found


def timed(argv: list[str] | str, env: dict[str, str], shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command; CPU use is added to CPU."""
    before = daemon_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, shell=shell, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {argv} failed with {proc.returncode}")
    for name, value in daemon_cpu().items():
        CPU[name] = CPU.get(name, 0.0) + value - before.get(name, 0.0)
    CPU["client"] = CPU.get("client", 0.0) + usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss


def cpu_line(label: str) -> str:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(CPU.items()))
    CPU.clear()
    return f"bench:   {label} CPU s: {parts}"


def empty_bucket(s3: object, bucket: str) -> None:
    client = s3  # boto3 client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # type: ignore[attr-defined]
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])  # type: ignore[attr-defined]


def stored_bytes(s3: object, bucket: str, prefix: str) -> int:
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=bucket, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []) if "/locks/" not in o["Key"])
    return total


def median_of(ours: list[float], theirs: list[float]) -> float:
    paired = sorted(k / b for k, b in zip(ours, theirs, strict=True))
    return paired[len(paired) // 2]


def docker_pull_pipeline(client: docker.DockerClient, pins: dict[str, str], refs: list[str],
                         base: str, aws: str, endpoint: str, env: dict[str, str]) -> float:
    """`docker pull PIN; docker save PIN | aws s3 cp -` into an engine without the images (the
    pull-source baseline), then the engine is as before (the refs tagged again)."""
    # the images built on the base first: the engine refuses to remove a parent before them
    ids = list(dict.fromkeys(client.api.inspect_image(r)["Id"] for r in [*refs, base]))
    for image_id in ids:
        client.images.remove(image_id, force=True)
    start = time.perf_counter()
    for name, pin in pins.items():
        pin = pin.replace(":1@", "@")  # the engine pulls repo@digest (a tag beside it: no)
        timed(f"docker pull -q {pin} >/dev/null && docker save {pin} | {aws} s3 cp - "
              f"s3://bench/docker/{name}.tar --endpoint-url {endpoint} --only-show-errors",
              env, shell=True)
    elapsed = time.perf_counter() - start
    for pin, ref in zip(pins.values(), refs, strict=True):
        client.api.tag(pin.replace(":1@", "@"), ref.rsplit(":", 1)[0], "v1")
    client.images.pull(base)
    return elapsed


def skopeo_floor(pins: dict[str, str], folder: Path, env: dict[str, str],
                 upload: str = "") -> float:
    """A bare `skopeo copy docker://PIN oci-archive:FILE` per image, all at once: the floor of
    a copy as served (nothing stored beyond local disk). With ``upload`` (`aws s3 cp
    --recursive` and its arguments), the archives then go to the store as well: the same
    work as kiln's (copied, then stored), a fair floor."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    # repo@digest, as kiln asks (skopeo takes no tag beside a digest)
    copies = "".join(f"skopeo copy --quiet docker://{pin.replace(':1@', '@')} "
                     f"oci-archive:{folder}/{name}.tar & p{n}=$!; "
                     for n, (name, pin) in enumerate(pins.items()))
    waits = " && ".join(f"wait $p{n}" for n in range(len(pins)))
    then = f" && {upload.replace('FOLDER', str(folder))}" if upload else ""
    elapsed, _ = timed(f"{copies}{waits}{then}", env, shell=True)
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


def spread(ours: list[float], theirs: list[float]) -> str:
    """The paired rounds' ratios: median, and the lowest and highest."""
    paired = sorted(k / b for k, b in zip(ours, theirs, strict=True))
    return f"{paired[len(paired) // 2]:.2f} ({paired[0]:.2f}-{paired[-1]:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor")
    parser.add_argument("--jobs", type=int, default=(os.cpu_count() or 1) + 1,
                        help="kiln's --jobs (default: its own default, cores + 1)")
    parser.add_argument("--profile", help="write a py-spy flame graph of one kiln bake here")
    parser.add_argument("--trace", action="store_true", help="show kiln's step lines")
    parser.add_argument("--big", action="store_true",
                        help="also bake one 1 GiB image and report the bake's peak RSS")
    parser.add_argument("--only-pull", action="store_true",
                        help="the pull-source case only (no `docker save | aws s3 cp -` of "
                             "images the engine has)")
    args = parser.parse_args()
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        raise SystemExit("bench: awscli is missing: pip install -e '.[bench]'")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/var/tmp"))
    containerd = localengine.start_containerd(work / "engine")
    dockerd = localengine.start_dockerd(work / "engine", containerd)
    registry_port = free_port()
    # skopeo (kiln's pulls) reaches the plain-HTTP registry through its per-user config
    (work / "home/.config/containers").mkdir(parents=True)
    (work / "home/.config/containers/registries.conf").write_text(
        f'[[registry]]\nlocation = "127.0.0.1:{registry_port}"\ninsecure = true\n')
    (work / "registry.yml").write_text(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {work / 'registry'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{registry_port}'}}\nlog: {{level: error}}\n")
    registry = subprocess.Popen(["docker-registry", "serve", str(work / "registry.yml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the OSD keeps every object in memory, deleted ones too until radosgw's garbage
        # collection (hours later): room for every round
        ceph = cephdev.start(work / "ceph", memory=12 << 30)
        env = {**os.environ, "DOCKER_HOST": dockerd.address,
               "AWS_ACCESS_KEY_ID": ceph.writer.access_key,
               "AWS_SECRET_ACCESS_KEY": ceph.writer.secret_key,
               "AWS_DEFAULT_REGION": ceph.region, "HOME": str(work / "home")}
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_DEFAULT_REGION")})
        return run(args, work, env, ceph.endpoint, f"127.0.0.1:{registry_port}", aws)
    finally:
        registry.terminate()
        cephdev.stop(work / "ceph")
        dockerd.stop()
        containerd.stop()
        subprocess.run(["umount", "-R", "-l", str(work)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, env: dict[str, str], endpoint: str,
        registry: str, aws: str) -> int:
    s = args.scale
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], timeout=600)
    print(f"bench: building images under {work} ...", flush=True)
    base = f"{registry}/bench/base:1"
    make_context(work / "ctx-base", 1, int(40 * MB * s), 0, int(30 * MB * s),
                 int(30 * MB * s), None)
    client.images.build(path=str(work / "ctx-base"), tag=base)
    for _ in client.images.push(base, stream=True):  # the pull baseline pulls it back
        pass
    pins = {}
    for i, name in enumerate(("registry", "dex", "keycloak")):
        make_context(work / f"ctx-{name}", 10 + i, int(20 * MB * s), int((60 + 25 * i) * MB * s),
                     int(22 * MB * s), int(22 * MB * s), base)
        upstream = f"{registry}/bench/{name}:1"
        client.images.build(path=str(work / f"ctx-{name}"), tag=upstream)
        digest = None
        for line in client.images.push(upstream, stream=True, decode=True):
            digest = line.get("aux", {}).get("Digest", digest)
        pins[name] = f"{upstream}@{digest}"
    images = "".join(
        f"  - {{name: {n}, ref: {REG}/foundation/{n}:v1, pull: '{p}', roles: [app]}}\n"
        for n, p in pins.items())
    config = work / "images.yaml"
    config.write_text(
        f"version: 1\nimages:\n{images}environments:\n"
        f"  bench:\n    registry: {REG}\n"
        f"    store: {{type: s3, endpoint: '{endpoint}', bucket: bench, prefix: kiln/}}\n")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="bench")
    refs = [f"{REG}/foundation/{n}:v1" for n in pins]
    for name, pin in pins.items():  # what kiln's pull does; the baseline saves the same refs
        client.api.tag(pin, f"{REG}/foundation/{name}", "v1")
    sizes = {r: client.api.inspect_image(r)["Size"] for r in refs}
    print(f"bench: {len(refs)} images, {sum(sizes.values()) / MB:.0f} MB uncompressed "
          f"({', '.join(f'{v / MB:.0f}' for v in sizes.values())}), sharing a "
          f"{client.api.inspect_image(base)['Size'] / MB:.0f} MB base", flush=True)
    for ref in refs:  # warm the page cache for both contenders alike
        subprocess.run(f"docker save {ref} > /dev/null", shell=True, env=env, check=True)

    kiln = [sys.executable, str(REPO / "bake.py"), "bake", "--config", str(config),
            "--jobs", str(args.jobs), *([] if args.trace else ["--quiet"])]
    fair = (f"{aws} s3 cp --recursive FOLDER s3://bench/floor/ --endpoint-url {endpoint} "
            "--only-show-errors")
    base_times: list[float] = []
    kiln_times: list[float] = []
    pull_times: list[float] = []
    floor_times: list[float] = []
    stored_times: list[float] = []
    rss = awscli_bytes = kiln_bytes = 0
    for rnd in range(args.rounds):
        empty_bucket(s3, "bench")
        pull_times.append(docker_pull_pipeline(client, pins, refs, base, aws, endpoint, env))
        print(cpu_line("docker pull pipeline"), flush=True)
        floor_times.append(skopeo_floor(pins, work / "floor", env))
        print(cpu_line("skopeo floor"), flush=True)
        empty_bucket(s3, "bench")
        stored_times.append(skopeo_floor(pins, work / "floor", env, fair))
        print(cpu_line("skopeo floor + aws s3 cp"), flush=True)
        if not args.only_pull:
            empty_bucket(s3, "bench")
            start = time.perf_counter()
            for name, ref in zip(pins, refs, strict=True):
                timed(f"docker save {ref} | {aws} s3 cp - s3://bench/awscli/{name}.tar "
                      f"--endpoint-url {endpoint} --only-show-errors", env, shell=True)
            base_times.append(time.perf_counter() - start)
            print(cpu_line("awscli"), flush=True)
            awscli_bytes = stored_bytes(s3, "bench", "awscli/")
        empty_bucket(s3, "bench")
        (work / "dist").exists() and shutil.rmtree(work / "dist")
        elapsed, peak = timed([*kiln, "--env", "bench"], env)
        kiln_times.append(elapsed)
        print(cpu_line("kiln"), flush=True)
        rss = max(rss, peak)
        kiln_bytes = stored_bytes(s3, "bench", "kiln/")
        awscli = "" if args.only_pull else f"awscli {base_times[-1]:.1f} s, "
        print(f"bench: round {rnd + 1}: {awscli}docker pull pipeline {pull_times[-1]:.1f} s, "
              f"skopeo floor {floor_times[-1]:.1f} s "
              f"(then stored: {stored_times[-1]:.1f} s), kiln {elapsed:.1f} s", flush=True)
    if args.profile:
        empty_bucket(s3, "bench")
        shutil.rmtree(work / "dist", ignore_errors=True)
        timed(["py-spy", "record", "--subprocesses", "--threads", "--gil", "-o", args.profile, "-f",
               "speedscope", "--", *kiln, "--env", "bench"], env)
    rebake, _ = timed([*kiln, "--env", "bench"], env)
    start = time.perf_counter()
    for ref in refs:
        client.api.inspect_image(ref)
    inspect = time.perf_counter() - start

    big_rss = big_time = 0.0
    if args.big:
        make_context(work / "ctx-big", 99, int(300 * MB), 0, int(300 * MB), int(424 * MB), None)
        client.images.build(path=str(work / "ctx-big"), tag=f"{REG}/foundation/big:v1")
        config.write_text(config.read_text().replace(
            "environments:\n",
            "  - {name: big, ref: registry.example.com/foundation/big:v1, build: ctx-big}\n"
            "environments:\n"))
        big_time, peak = timed([*kiln, "--env", "bench"], env)
        big_rss = peak / 1024
        big_size = client.api.inspect_image(f"{REG}/foundation/big:v1")["Size"]

    best_kiln = min(kiln_times)
    print()
    print(f"{'measurement':<44}{'value':>14}")
    print(f"{'kiln bake (full)':<44}{best_kiln:>12.2f} s")
    if base_times:
        best_base = min(base_times)
        print(f"{'awscli pipeline (docker save | aws s3 cp -)':<44}{best_base:>12.2f} s")
        print(f"{'  ratio of the best runs (target <= 0.70)':<44}{best_kiln / best_base:>14.2f}")
        print(f"{'  median ratio of paired rounds':<44}{median_of(kiln_times, base_times):>14.2f}")
    best_pull, best_floor, best_stored = min(pull_times), min(floor_times), min(stored_times)
    print(f"{'pull source: docker pull + save | aws s3 cp':<44}{best_pull:>12.2f} s")
    print(f"{'  ratio kiln / it (target <= 0.40)':<44}{best_kiln / best_pull:>14.2f}")
    print(f"{'  paired rounds: median (range)':<44}{spread(kiln_times, pull_times):>24}")
    print(f"{'pull source: skopeo copy to oci-archive':<44}{best_floor:>12.2f} s")
    print(f"{'  ratio kiln / the floor (target <= 1.20)':<44}{best_kiln / best_floor:>14.2f}")
    print(f"{'  paired rounds: median (range)':<44}{spread(kiln_times, floor_times):>24}")
    print(f"{'  the same, then aws s3 cp --recursive':<44}{best_stored:>12.2f} s")
    print(f"{'  ratio kiln / it (copied and stored)':<44}{best_kiln / best_stored:>14.2f}")
    print(f"{'  paired rounds: median (range)':<44}{spread(kiln_times, stored_times):>24}")
    if base_times:
        print(f"{'bytes stored by awscli':<44}{awscli_bytes / MB:>11.1f} MB")
        print(f"{'bytes stored by kiln':<44}{kiln_bytes / MB:>11.1f} MB")
        print(f"{'  ratio kiln / awscli':<44}{kiln_bytes / awscli_bytes:>14.2f}")
    print(f"{'kiln no-change rebake':<44}{rebake:>12.2f} s")
    print(f"{'  of which engine inspects (floor)':<44}{inspect:>12.2f} s")
    print(f"{'kiln bake peak RSS':<44}{rss / 1024:>11.1f} MB")
    if args.big:
        print(f"{f'bake of one {big_size / MB:.0f} MB image: peak RSS':<44}{big_rss:>11.1f} MB")
        print(f"{'  its bake time':<44}{big_time:>12.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
