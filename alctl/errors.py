"""User-facing errors: each maps to an exit code and prints one line per problem."""

from __future__ import annotations


class AlctlError(Exception):
    """A failure alctl reports without a traceback (exit code 1 unless a subclass says otherwise)."""

    exit_code: int = 1

    def __init__(self, *problems: str) -> None:
        """Keep one message line per problem."""
        self.problems: list[str] = [p for p in problems if p] or ["unknown error"]
        super().__init__("\n".join(self.problems))


class UserError(AlctlError):
    """Bad input: manifest, arguments, labels (exit code 2)."""

    exit_code = 2


class ManifestError(UserError):
    """A manifest that does not parse or validate; one problem per field path."""


class DataMissingError(UserError):
    """Dataset files absent and not downloadable; the message says how to provide them."""


class TaskLockedError(UserError):
    """Another live process holds the task's lock."""


class Preempted(AlctlError):
    """The run stopped on SIGTERM/SIGUSR1 after checkpointing; rerun to resume."""

    exit_code = 3
