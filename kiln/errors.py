"""The errors a user can cause, and the exit codes they map to (see cli.main)."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1  # findings, or an operation that failed for a reason outside kiln
EXIT_INVALID = 2  # unreadable or invalid input: config, arguments
EXIT_INTERNAL = 3  # a bug in kiln


class KilnError(Exception):
    """A failure the user can act on: reported as one line, exit 1."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, at a 1-based line and column."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(KilnError):
    """Invalid input (images.yaml, an inventory, a chart file): exit 2, every problem listed."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Cancelled(KilnError):
    """The user interrupted the command; whatever was in flight has been rolled back."""


class UsageError(KilnError):
    """Bad command-line arguments (a missing or unknown --env, say): exit 2."""

    exit_code = EXIT_INVALID


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `timeout`, `kill`): unwinds like Ctrl-C, so every finally
    block and rollback runs (temp folders, the registry auth file, half-written objects)."""
