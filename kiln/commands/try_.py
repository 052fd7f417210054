"""`kiln try`: smoke-test the rendered user-data in a throwaway VM before PXE-booting a rack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kiln.commands.common import load_with_lock
from kiln.commands.render import check_nodes_get_images
from kiln.errors import EXIT_FAILED, EXIT_OK, UsageError
from kiln.inventory import Node, load_inventory
from kiln.lock import Lock, images_for_roles
from kiln.vm import Trial


def try_cmd(config_path: str, env_name: str | None, *, base_image: str, role: str | None,
            kernel: str | None, initrd: str | None, append: str | None, timeout: float,
            no_store: bool = False, as_json: bool = False, dist: str | None = None,
            inventory: str | None = None, node: str | None = None) -> int:
    _, env, lock = load_with_lock(config_path, env_name, dist)
    chosen = inventory_node(inventory, node, role, lock)
    trial = Trial(env, lock, Path(base_image), role=role, node=chosen,
                  kernel=Path(kernel) if kernel else None,
                  initrd=Path(initrd) if initrd else None, append=append, timeout=timeout,
                  serve_store=not no_store, log=lambda m: print(m, file=sys.stderr, flush=True))
    result = trial.run()
    if as_json:
        print(json.dumps({"ok": result.ok, "seconds": round(result.seconds, 1),
                          "status": result.status, "check": result.check,
                          "report": result.lines}, indent=2))
    else:
        seen = {i.get("ref"): i for i in result.check.get("images", [])}
        for image in images_for_roles(lock, trial.roles):
            got = seen.get(image.ref, {})
            mark = "ok " if got.get("image_id") == image.image_id and got.get(
                "state") == "present" else "BAD"
            print(f"{mark} {image.ref} {got.get('state', 'missing')} {got.get('image_id', '-')}")
        unit = dict(line.split("=", 1) for line in result.field("unit: ") if "=" in line)
        kubelet = dict(line.split("=", 1) for line in result.field("kubelet: ") if "=" in line)
        print(f"    kiln-import.service: Before={unit.get('Before', '?')}")
        print(f"    kubelet.service: After={kubelet.get('After', '?')}")
        start, end = (int(unit.get(k) or 0) for k in ("ExecMainStartTimestampMonotonic",
                                                      "ExecMainExitTimestampMonotonic"))
        kubelet_start = int(kubelet.get("ExecMainStartTimestampMonotonic") or 0)
        if start and end:
            print(f"    the import ran {(end - start) / 1e6:.1f}s, from {start / 1e6:.1f}s after "
                  "boot" + (f"; kubelet started {(kubelet_start - end) / 1e6:+.1f}s after it "
                            "finished" if kubelet_start else "; no kubelet here"))
        if chosen is not None:
            names = result.field("hostname: ")
            print(f"    the guest is {names[0] if names else '?'} (seed "
                  f"nodes/{chosen.hostname}/ over HTTP, as PXE)")
        print(f"kiln: try: {'every image present and pinned' if result.ok else 'FAILED'} "
              f"({result.seconds:.0f}s from power-on to the importer's report)")
    return EXIT_OK if result.ok else EXIT_FAILED


def inventory_node(inventory: str | None, hostname: str | None, role: str | None,
                   lock: Lock) -> Node | None:
    """The inventory node `--inventory F --node H` names (checked as `render` checks it)."""
    if inventory is None and hostname is None:
        return None
    if inventory is None or hostname is None:
        raise UsageError("--inventory and --node go together")
    if role is not None:
        raise UsageError("--role comes from the inventory with --node: drop --role")
    nodes = load_inventory(Path(inventory), inventory)
    found = next((n for n in nodes if n.hostname == hostname), None)
    if found is None:
        known = ", ".join(n.hostname for n in nodes[:10]) or "none"
        raise UsageError(f"--node {hostname}: not in {inventory} (nodes: {known})")
    check_nodes_get_images([found], lock, inventory)
    return found
