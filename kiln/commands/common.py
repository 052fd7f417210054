"""What several commands start with: the config, the environment and its lock."""

from __future__ import annotations

from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.bake import dist_folder
from kiln.config import Config, Environment
from kiln.errors import KilnError
from kiln.lock import Lock


def load_with_lock(config_path: str, env_name: str | None, dist: str | None
                   ) -> tuple[Config, Environment, Lock]:
    """images.yaml, the environment, and dist/<env>/images.lock.json (which must exist)."""
    config = config_mod.load(Path(config_path), config_path)
    env = config.environment(env_name)
    path = lockfile.lock_path(Path(dist) if dist else dist_folder(config), env.name)
    lock = lockfile.read(path)
    if lock is None:
        raise KilnError(f"no lock for {env.name} at {path}: run "
                        f"`python bake.py bake --env {env.name}` first")
    return config, env, lock
