"""`kiln golden` (`make golden ENV=...`): run the generated Packer build with the store
reachable from the VM.

Serves a dir store over HTTP, renders the node files with the base URL a qemu user-mode guest
reaches (10.0.2.2) into a scratch copy of dist/<env>/packer, and runs `packer build` with the
variables given (base_image, kernel, initrd, ssh_key, output_dir).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kiln.commands.common import data_signer, trusted_lock
from kiln.errors import EXIT_OK, KilnError, UsageError
from kiln.project import Project
from kiln.render import PlainLocator, render
from kiln.vm import store_for_guest


def golden_cmd(config_path: str, env_name: str | None, variables: list[str], *,
               dist: str | None = None) -> int:
    project = Project.load(config_path, env_name, dist)
    env = project.env
    if not env.packer_sources:
        raise UsageError(f"environment {env.name} names no packer sources "
                         "(images.yaml: packer: {sources: [...]})")
    for variable in variables:
        if "=" not in variable:
            raise UsageError(f"--var {variable!r}: expected NAME=VALUE")
    if shutil.which("packer") is None:
        raise KilnError("packer is not installed (apt-get install packer)")
    lock = trusted_lock(project)
    work = Path(tempfile.mkdtemp(prefix="kiln-golden-"))
    try:
        with store_for_guest(env.store) as url:  # served until packer is done
            render(env, lock, work, PlainLocator(url or ""), sign=data_signer(),
                   packer_dir=project.config.root / "packer")
            argv = ["packer", "build", "-force"]
            for variable in variables:
                argv += ["-var", variable]
            argv.append(str(work / env.name / "packer"))
            # packer's qemu builder keeps port locks in ./packer_cache unless told: not in the repo
            environ = {"PACKER_CACHE_DIR": str(work / "packer_cache"), **os.environ,
                       "CHECKPOINT_DISABLE": "1"}
            code = subprocess.call(argv, env=environ)
        if code != 0:
            raise KilnError(f"packer build failed (exit {code}): its output is above")
        return EXIT_OK
    finally:
        shutil.rmtree(work, ignore_errors=True)
