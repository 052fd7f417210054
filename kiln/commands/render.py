"""`kiln render`: from the lock, what nodes run (cloud-init, seeds, Packer, node importer)."""

from __future__ import annotations

import sys
from pathlib import Path

from kiln.errors import EXIT_OK
from kiln.inventory import load_inventory
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


def render_env(config: Config, env: Environment, dist: Path, inventory: str | None = None,
               quiet: bool = False, after_bake: bool = False,
               allow_credentials_in_golden_image: bool = False) -> int:
    check_golden_credentials(env, allow_credentials_in_golden_image)
    missing = missing_url(env)
    if missing and after_bake:  # a bake into a store nodes cannot read yet is still a bake
        sys.stderr.write(f"kiln: warning: node files not rendered: {missing}\n")
        return EXIT_OK
    lock = Project(config, env, dist).lock()
    nodes = load_inventory(Path(inventory), inventory) if inventory else None
    result = render(env, lock, dist, locator_for(env), nodes=nodes,
                    packer_dir=config.root / "packer",
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
