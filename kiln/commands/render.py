"""`kiln render`: from the lock, what nodes run (cloud-init, seeds, Packer, node importer)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kiln.commands.common import data_signer, trusted_lock
from kiln.errors import EXIT_OK, ConfigError, Problem
from kiln.inventory import Node, load_inventory
from kiln.lock import Lock, images_for_roles
from kiln.model import Config, Environment
from kiln.project import Project
from kiln.render import (
    GoldenCredentialsError,
    golden_credentials_refusal,
    locator_for,
    missing_url,
    render,
)


def check_golden_credentials(env: Environment, allow: bool) -> None:
    """Refuse (exit 2) before any work when the golden image would carry S3 credentials."""
    refusal = golden_credentials_refusal(env)
    if refusal and not allow:
        raise GoldenCredentialsError(refusal)


def check_nodes_get_images(nodes: list[Node], lock: Lock, inventory: str) -> None:
    """A node whose roles select no image could never pass the import, so kubelet (held
    until it does) would never start: refused at the node's place in the inventory."""
    known = sorted({role for image in lock.images for role in image.roles})
    problems = [
        Problem(inventory, node.line, node.column,
                f"node {node.hostname}: roles {list(node.roles)} select no image of the lock "
                f"(roles there: {', '.join(known) or 'none'}; an image without roles goes "
                "to every node)")
        for node in nodes if not images_for_roles(lock, node.roles or None)
    ]
    if problems:
        raise ConfigError(problems)


def render_env(config: Config, env: Environment, dist: Path, inventory: str | None = None,
               quiet: bool = False, after_bake: bool = False,
               allow_credentials_in_golden_image: bool = False,
               presign_client: Any = None) -> int:
    check_golden_credentials(env, allow_credentials_in_golden_image)
    missing = missing_url(env)
    if missing and after_bake:  # a bake into a store nodes cannot read yet is still a bake
        sys.stderr.write(f"kiln: warning: node files not rendered: {missing}\n")
        return EXIT_OK
    lock = trusted_lock(Project(config, env, dist))
    nodes = load_inventory(Path(inventory), inventory) if inventory else None
    if nodes is not None and inventory is not None:
        check_nodes_get_images(nodes, lock, inventory)
    result = render(env, lock, dist, locator_for(env, client=presign_client), nodes=nodes,
                    sign=data_signer(), packer_dir=config.root / "packer",
                    allow_credentials_in_golden_image=allow_credentials_in_golden_image)
    for warning in result.warnings:
        sys.stderr.write(f"kiln: warning: {warning}\n")
    if not quiet:
        where = dist / env.name
        sys.stderr.write(f"kiln: rendered {len(result.files)} files under {where}\n")
    return EXIT_OK


def render_cmd(config_path: str, env_name: str | None, *, inventory: str | None = None,
               dist: str | None = None, allow_credentials_in_golden_image: bool = False) -> int:
    project = Project.load(config_path, env_name, dist)
    return render_env(project.config, project.env, project.dist, inventory,
                      allow_credentials_in_golden_image=allow_credentials_in_golden_image)
