"""What several commands start with: the config, the environment and its lock."""

from __future__ import annotations

from kiln.lock import Lock
from kiln.model import Config, Environment
from kiln.project import Project


def load_with_lock(config_path: str, env_name: str | None, dist: str | None
                   ) -> tuple[Config, Environment, Lock]:
    """images.yaml, the environment, and dist/<env>/images.lock.json (which must exist)."""
    project = Project.load(config_path, env_name, dist)
    return project.config, project.env, project.lock()
