"""`make demo ENV=dev`: day 1 on one machine.

Bakes, serves the store over HTTP where the rendered data file says it is, starts a private
containerd (a stand-in for a fresh node), runs the rendered importer against it, shows
`ctr -n k8s.io images ls` and stops what it started.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from kiln import config as config_mod
from kiln import localengine
from kiln.httpserve import serve
from kiln.model import DirStore
from kiln.project import dist_folder


def serve_at(folder: Path, url: str) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` at the host and port of ``url`` (loopback only)."""
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"demo: the store url {url} is not on this machine")
    return serve(folder, host, parsed.port or 80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.demo")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--config", default="images.yaml")
    args = parser.parse_args(argv)
    config = config_mod.load(Path(args.config), args.config)
    env = config.environment(args.env)
    if not isinstance(env.store, DirStore) or not env.store.url:
        print(f"demo: environment {env.name} needs a dir store with a url", file=sys.stderr)
        return 2
    bake = subprocess.run([sys.executable, "bake.py", "bake", "--env", env.name,
                           "--config", args.config], check=False)
    if bake.returncode != 0:
        return bake.returncode
    node = dist_folder(config) / env.name / "node"
    base = Path(tempfile.mkdtemp(prefix="kiln-demo-"))
    server = serve_at(env.store.path, env.store.url)
    containerd = localengine.start_containerd(base)
    print(f"demo: serving {env.store.path} at {env.store.url}; a fresh containerd at "
          f"{containerd.socket}", flush=True)
    try:
        environ = {**os.environ, "CONTAINERD_ADDRESS": str(containerd.socket)}
        status = base / "status.json"
        code = subprocess.call(["sh", str(node / "import-images"), "--status", str(status)],
                               env=environ)
        print("\ndemo: ctr -n k8s.io images ls (the node's cache: exact refs, pinned)")
        subprocess.call(["ctr", "-n", "k8s.io", "images", "ls"], env=environ)
        print(f"\ndemo: importer status: {status.read_text().strip() if status.exists() else '-'}")
        print("demo: again, as on the next boot:")
        code = code or subprocess.call(["sh", str(node / "import-images"), "--status",
                                        str(status)], env=environ)
        return code
    finally:
        containerd.stop()
        server.shutdown()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
