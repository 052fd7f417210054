"""`kiln verify`: check a containerd against the lock (present, image ID, pinned, CRI-visible)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from kiln import grammar, platforms
from kiln.commands.common import load_with_lock
from kiln.containerd import CtrContainerd
from kiln.errors import EXIT_FAILED, EXIT_OK, UsageError
from kiln.verify import as_dicts, verify_node


def verify_cmd(config_path: str, env_name: str | None, *, address: str,
               roles: Sequence[str] = (), as_json: bool = False, dist: str | None = None,
               platform: str | None = None) -> int:
    _, _, lock = load_with_lock(config_path, env_name, dist)
    if platform is None:
        platform = platforms.of_machine(os.uname().machine)
        if platform is None:
            raise UsageError(f"no platform known for machine {os.uname().machine}: "
                             "pass --platform os/arch[/variant]")
    elif not grammar.matches(grammar.PLATFORM, platform):
        raise UsageError(f"--platform must be os/arch[/variant], not {platform!r}")
    found = verify_node(lock, CtrContainerd(address), roles, platform)
    if as_json:
        print(json.dumps(as_dicts(found), indent=2))
    else:
        for item in found:
            print(f"{'ok ' if item.ok else 'BAD'} {item.state:<18} {item.ref}  {item.detail}")
        bad = sum(1 for f in found if not f.ok)
        print(f"kiln: verify: {len(found) - bad} of {len(found)} images as the lock says",
              file=sys.stderr)
    return EXIT_OK if all(f.ok for f in found) else EXIT_FAILED
