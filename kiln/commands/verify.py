"""`kiln verify`: check a containerd against the lock (present, image ID, pinned, CRI-visible)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.bake import dist_folder
from kiln.containerd import CtrContainerd
from kiln.errors import EXIT_FAILED, EXIT_OK, KilnError
from kiln.verify import as_dicts, verify_node


def verify_cmd(config_path: str, env_name: str | None, *, address: str, role: str | None,
               as_json: bool = False, dist: str | None = None) -> int:
    config = config_mod.load(Path(config_path), config_path)
    env = config.environment(env_name)
    folder = Path(dist) if dist else dist_folder(config)
    lock = lockfile.read(lockfile.lock_path(folder, env.name))
    if lock is None:
        raise KilnError(f"no lock for {env.name} at {lockfile.lock_path(folder, env.name)}")
    found = verify_node(lock, CtrContainerd(address), role)
    if as_json:
        print(json.dumps(as_dicts(found), indent=2))
    else:
        for item in found:
            print(f"{'ok ' if item.ok else 'BAD'} {item.state:<18} {item.ref}  {item.detail}")
        bad = sum(1 for f in found if not f.ok)
        print(f"kiln: verify: {len(found) - bad} of {len(found)} images as the lock says",
              file=sys.stderr)
    return EXIT_OK if all(f.ok for f in found) else EXIT_FAILED
