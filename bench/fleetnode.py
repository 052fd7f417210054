"""The nodes of bench/fleet.py: the images they fetch, the rendered importer, `ctr` for each.

Images: each is one layer of random bytes (incompressible: the bytes on the wire are the
sizes asked for), written as the `docker save` stream an engine would give and turned into
kiln's stored object by kiln itself (kiln.publish: an OCI archive with a zstd layer, stored
under its sha256 in a kiln folder store), with a lock as a bake writes it; no engine runs.

Each node runs the real rendered importer (`dist/<env>/node/import-images` with its data file,
the URLs pointing at the proxy) under the loop its systemd unit gives it: a failed run is run
again `RestartSec` later, for ever (until the bench's deadline). Its `ctr` is one of:

- a real containerd of its own (`--real-containerd K` nodes): `ctr` is a shim that records the
  sha256 of each archive handed to `images import`, then runs the real ctr;
- the stand-in (every other node; bench/fleet-ctr.sh with bench/fleetctr.py): it answers
  `version`, `images ls|label|rm` and `content get` from a folder of its own, and its
  `images import` reads the whole archive and checks it is a complete OCI archive (oci-layout,
  index.json, every blob's sha256 equal to its name, every manifest's config and layers
  there). It unpacks nothing: those nodes are a network and store simulation.
Both record each import's archive sha256 against the lock's (an import whose bytes are not
the lock's is "unverified").
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.model import Environment
from kiln.publish import publish
from kiln.render import PlainLocator, render
from kiln.stores import open_store

REG = "registry.example.com"
ENV = "fleet"
HERE = Path(__file__).resolve().parent

UNIT = """\
#!/bin/sh
# The node's kiln-import.service as systemd runs it: Restart=on-failure, RestartSec=$2.
node=$1
until sh "$FLEET_IMPORTER" --status "$node/status.json" --retry-state "$node/failed-runs" \\
    2>>"$node/import.log"; do
  echo "unit: run failed; again in $2 s" >> "$node/import.log"
  sleep "$2"
done
date +%s.%N > "$node/ready"
"""

SHIM = """\
#!/bin/sh
# ctr on a node with a real containerd: record what `images import` is handed, then run ctr.
last=""
for arg in "$@"; do last=$arg; done
case " $* " in
  *" images import "*) [ -f "$last" ] && "{python}" -I -S "{checker}" record "$last" ;;
esac
exec "{ctr}" "$@"
"""


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_save(ref: str, payload: bytes) -> bytes:
    """What `docker save REF` writes for a FROM-scratch image of one file."""
    layer = _tar([("data/payload.bin", payload)])
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/data/payload.bin"]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_id = hashlib.sha256(layer).hexdigest()
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    return _tar([(config_name, config), (f"{layer_id}/layer.tar", layer),
                 ("manifest.json", manifest)])


def config_text(sizes_mb: list[float], node: dict[str, str]) -> str:
    lines = [f"  - {{name: img{i}, ref: {REG}/fleet/img{i}:v1, archive: img{i}.tar}}\n"
             for i in range(len(sizes_mb))]
    settings = ", ".join(f"{k}: {v}" for k, v in node.items())
    return ("version: 1\nimages:\n" + "".join(lines) + "environments:\n"
            f"  {ENV}:\n    registry: {REG}\n"
            "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
            + (f"    node: {{{settings}}}\n" if settings else ""))


def make_store(work: Path, sizes_mb: list[float], seed: int, node: dict[str, str]
               ) -> tuple[Environment, lockfile.Lock]:
    """Images of ``sizes_mb`` MB of random bytes, stored by kiln under ``work/store``; the
    environment's ``node:`` settings as given (the defaults otherwise)."""
    (work / "images.yaml").write_text(config_text(sizes_mb, node))
    env = config_mod.load(work / "images.yaml").environment(ENV)
    store = open_store(env.store)
    rng = random.Random(seed)
    entries = []
    try:
        for i, size in enumerate(sizes_mb):
            ref = f"{REG}/fleet/img{i}:v1"
            raw = docker_save(ref, rng.randbytes(int(size * (1 << 20))))
            done = publish([raw], store, env.compression, len(raw))
            entries.append(lockfile.LockedImage(
                name=f"img{i}", ref=ref, image_id=done.images[ref], platform="linux/amd64",
                sha256=done.sha256, size=done.size, uncompressed_size=len(raw),
                compression=env.compression.algorithm, compression_level=env.compression.level,
                key=done.key, roles=(), source="archive",
                upstream=hashlib.sha256(raw).hexdigest(),
                manifest_digests=(("linux/amd64", done.manifests[ref]),)))
    finally:
        store.close()
    lock = lockfile.Lock(ENV, REG, tuple(entries), store=store.facts())
    lockfile.write(lockfile.lock_path(work / "dist", ENV), lock)
    return env, lock


def render_for(env: Environment, lock: lockfile.Lock, work: Path, base_url: str) -> Path:
    """The real importer and its data file, the objects' URLs under ``base_url``."""
    render(env, lock, work / "dist", PlainLocator(base_url))
    return work / "dist" / ENV / "node"


def restart_sec(node_dir: Path) -> int:
    """RestartSec= of the rendered unit (what systemd waits between runs)."""
    for line in (node_dir / "kiln-import.service").read_text().splitlines():
        if line.startswith("RestartSec="):
            return int(line.split("=", 1)[1])
    return 10


@dataclass
class NodeFiles:
    folder: Path
    env: dict[str, str]


def prepare(work: Path, node_dir: Path, lock: lockfile.Lock) -> tuple[Path, Path, Path]:
    """The unit loop, the stand-in's bin folder and the shim's, under ``work``."""
    (work / "expect.json").write_text(json.dumps({i.ref: i.sha256 for i in lock.images}))
    unit = work / "unit.sh"
    unit.write_text(UNIT)
    stand_in, shim = work / "bin-stand-in", work / "bin-shim"
    for folder in (stand_in, shim):
        folder.mkdir(exist_ok=True)
    shutil.copy(HERE / "fleet-ctr.sh", stand_in / "ctr")
    real = shutil.which("ctr")
    if real is None:
        raise SystemExit("fleet: ctr is not installed (apt-get install containerd)")
    (shim / "ctr").write_text(SHIM.format(python=sys.executable, checker=HERE / "fleetctr.py",
                                          ctr=real))
    for script in (stand_in / "ctr", shim / "ctr"):
        script.chmod(0o755)
    return unit, stand_in, shim


def node_files(work: Path, i: int, bin_dir: Path, node_dir: Path, path: str,
               containerd: str | None) -> NodeFiles:
    folder = work / "nodes" / f"n{i}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "tmp").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:{path}", "TMPDIR": str(folder / "tmp"), "LC_ALL": "C",
           "FLEET_IMPORTER": str(node_dir / "import-images"),
           "FLEET_CTR_STATE": str(folder / "ctr"), "FLEET_CTR_CHECKER": str(HERE / "fleetctr.py"),
           "FLEET_EXPECT": str(work / "expect.json"),
           "CONTAINERD_ADDRESS": containerd or str(folder / "no-containerd.sock")}
    return NodeFiles(folder, env)


@dataclass
class Outcome:
    ready: float | None  # epoch seconds
    failed_runs: int
    imports: list[dict[str, object]]


def outcome(folder: Path) -> Outcome:
    ready = None
    if (folder / "ready").exists():
        ready = float((folder / "ready").read_text().strip())
    log = (folder / "import.log").read_text() if (folder / "import.log").exists() else ""
    imports = []
    record = folder / "ctr" / "imports.jsonl"
    if record.exists():
        imports = [json.loads(line) for line in record.read_text().splitlines() if line]
    return Outcome(ready, log.count("unit: run failed"), imports)
