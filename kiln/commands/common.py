"""What several commands start with: the config, the environment and its lock."""

from __future__ import annotations

from collections.abc import Callable

from kiln.lock import Lock
from kiln.model import Config, Environment
from kiln.project import NoLock, Project


def trusted_lock(project: Project) -> Lock:
    """The environment's lock (NoLock when there is none); with ``lock_public_key``, only
    once its detached signature verifies with that key (kiln/signing.py)."""
    key = project.env.lock_public_key
    if key is None:
        return project.lock()
    from kiln import signing

    lock = signing.trusted(project.lock_path, key)
    if lock is None:
        return project.lock()  # raises NoLock, with what to run
    return lock


def data_signer() -> Callable[[bytes], bytes] | None:
    """Signs node data files with the team's key (KILN_SIGNING_KEY) when one is given: nodes
    whose image holds the public key (/etc/kiln/data.pub) import only signed data."""
    from kiln import signing

    key = signing.signing_key()
    if key is None:
        return None
    return lambda data: signing.sign(data, *key)


def load_with_lock(config_path: str, env_name: str | None, dist: str | None
                   ) -> tuple[Config, Environment, Lock]:
    """images.yaml, the environment, and dist/<env>/images.lock.json (which must exist and,
    with lock_public_key, be signed)."""
    project = Project.load(config_path, env_name, dist)
    return project.config, project.env, trusted_lock(project)


__all__ = ["NoLock", "data_signer", "load_with_lock", "trusted_lock"]
