"""`kiln lint`: config, naming rules and chart alignment for one environment."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from kiln import config as config_mod
from kiln import lint as lint_mod
from kiln import lock as lockfile
from kiln.errors import EXIT_FAILED, EXIT_OK, KilnError


def lint(config_path: str, env_name: str | None, fmt: str = "text",
         out: TextIO | None = None, lock_path: str | None = None) -> int:
    """Print the findings; exit 1 when any is an error, 0 when clean or warnings only."""
    config = config_mod.load(Path(config_path), config_path)
    env = config.environment(env_name)
    lock = None
    if lock_path is not None:
        lock = lockfile.read(Path(lock_path))
        if lock is None:
            raise KilnError(f"no lock at {lock_path}")
    findings = lint_mod.run(config, env, lock)
    out = out or sys.stdout
    out.write(lint_mod.format_json(findings) if fmt == "json" else lint_mod.format_text(findings))
    return EXIT_FAILED if lint_mod.has_errors(findings) else EXIT_OK
