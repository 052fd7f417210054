"""The project context every command starts from: images.yaml, one environment, the dist
folder and (where the command needs it) the environment's lock. Resolved once, handed on.

Core: no Docker, boto3 or subprocess here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.errors import KilnError
from kiln.lock import Lock
from kiln.model import Config, Environment


class NoLock(KilnError):
    """The command works from a lock and there is none yet."""


def dist_folder(config: Config) -> Path:
    """dist/ beside images.yaml: locks, stores of the dev kind, rendered node files."""
    return config.root / "dist"


@dataclass(frozen=True)
class Project:
    config: Config
    env: Environment
    dist: Path

    @classmethod
    def load(cls, config_path: str, env_name: str | None, dist: str | Path | None = None
             ) -> Project:
        """Read images.yaml (ConfigError lists every problem) and pick the environment."""
        config = config_mod.load(Path(config_path), str(config_path))
        env = config.environment(env_name)
        return cls(config, env, Path(dist) if dist else dist_folder(config))

    @property
    def lock_path(self) -> Path:
        return lockfile.lock_path(self.dist, self.env.name)

    def read_lock(self) -> Lock | None:
        """The environment's lock, None when there is none (an old one raises OldLock)."""
        return lockfile.read(self.lock_path)

    def lock(self) -> Lock:
        """The environment's lock; NoLock with what to run when there is none."""
        lock = self.read_lock()
        if lock is None:
            raise NoLock(f"no lock for {self.env.name} at {self.lock_path}: run "
                         f"`python bake.py bake --env {self.env.name}` first")
        return lock
