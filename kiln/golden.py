"""`make golden ENV=...`: run the generated Packer build with the store reachable from the VM.

Serves a dir store over HTTP, renders the node files with the base URL a qemu user-mode guest
reaches (10.0.2.2) into a scratch copy of dist/<env>/packer, and runs `packer build` with the
variables given (base_image, kernel, initrd, ssh_key, output_dir).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.config import DirStore
from kiln.httpserve import serve
from kiln.project import dist_folder
from kiln.render import PlainLocator, render
from kiln.vm import GUEST_HOST, guest_url


def build(config_path: str, env_name: str, variables: list[str]) -> int:
    config = config_mod.load(Path(config_path), config_path)
    env = config.environment(env_name)
    if not env.packer_sources:
        print(f"golden: environment {env.name} names no packer sources", file=sys.stderr)
        return 2
    lock = lockfile.read(lockfile.lock_path(dist_folder(config), env.name))
    if lock is None:
        print(f"golden: no lock for {env.name}: bake first", file=sys.stderr)
        return 1
    server = None
    work = Path(tempfile.mkdtemp(prefix="kiln-golden-"))
    try:
        if isinstance(env.store, DirStore):
            server = serve(env.store.path)
            base = f"http://{GUEST_HOST}:{server.server_address[1]}/"
        else:
            base = guest_url(env.store.url or "")
        render(env, lock, work, PlainLocator(base), packer_dir=config.root / "packer")
        argv = ["packer", "build", "-force"]
        for variable in variables:
            argv += ["-var", variable]
        argv.append(str(work / env.name / "packer"))
        # packer's qemu builder keeps port locks in ./packer_cache unless told: not in the repo
        environ = {"PACKER_CACHE_DIR": str(work / "packer_cache"), **os.environ,
                   "CHECKPOINT_DISABLE": "1"}
        return subprocess.call(argv, env=environ)
    finally:
        if server is not None:
            server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.golden")
    parser.add_argument("--env", required=True)
    parser.add_argument("--config", default="images.yaml")
    parser.add_argument("--var", action="append", default=[], help="NAME=VALUE for packer")
    args = parser.parse_args(argv)
    return build(args.config, args.env, args.var)


if __name__ == "__main__":
    sys.exit(main())
