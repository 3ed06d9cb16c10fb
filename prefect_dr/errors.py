"""The exception hierarchy of prefect-dr and the exit code each one maps to.

Core modules raise these; only the CLI turns them into exit codes (docs/exit-codes.md).
This module imports nothing from the package so every other module may import it.
"""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
PARTIAL = 3
NOT_FOUND = 10
LOCK_HELD = 11
KEY_ERROR = 12
VERIFICATION_FAILED = 13
SCHEMA_REFUSED = 14
STALE = 15
SETUP = 16
INTERRUPTED = 130

#: The one table of exit codes: code -> (name, whether a retry of the same run can help).
#: docs/exit-codes.md, notifications (notify.py), the Kubernetes Jobs' podFailurePolicy
#: (k8s) and the tests all read it; tests/test_exit_codes.py checks the docs against it.
EXIT_CODES: dict[int, tuple[str, bool]] = {
    OK: ("ok", False),
    FAILURE: ("failure", True),
    USAGE: ("usage / configuration", False),
    PARTIAL: ("partial", True),
    NOT_FOUND: ("not found", False),
    LOCK_HELD: ("lock held", False),
    KEY_ERROR: ("key error", False),
    VERIFICATION_FAILED: ("verification failed", False),
    SCHEMA_REFUSED: ("schema refused", False),
    STALE: ("stale", False),
    SETUP: ("set-up", False),
    INTERRUPTED: ("interrupted", True),
}
#: Failures a retry of the same run cannot fix: a Kubernetes Job fails at once on them.
NO_RETRY_EXIT_CODES: tuple[int, ...] = tuple(
    code for code, (_, retry) in EXIT_CODES.items() if code != OK and not retry)


def exit_name(code: int) -> str:
    """The name of exit code ``code`` (``failure`` for a code the table does not know)."""
    return EXIT_CODES.get(code, EXIT_CODES[FAILURE])[0]


class DRError(Exception):
    """Base class of every expected failure; ``exit_code`` is what the CLI exits with.

    The message must be one line, actionable, and free of secrets.
    """

    exit_code: int = FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        """The one-line message (first line of the argument, whitespace folded)."""
        text = str(self.args[0]) if self.args else type(self).__name__
        return " ".join(text.split())


class ConfigError(DRError):
    """Settings are missing or invalid; carries every problem found at once."""

    exit_code = USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = "invalid configuration" if n == 1 else f"invalid configuration ({n} problems)"
        super().__init__(f"{head}: " + "; ".join(self.problems))


class UsageError(DRError):
    """The command line is wrong: an unknown flag or command, a bad or missing argument."""

    exit_code = USAGE


class StorageError(DRError):
    """The object store failed or refused a request."""


class NotFoundError(DRError):
    """A backup, object or repository does not exist."""

    exit_code = NOT_FOUND


class DatabaseError(DRError):
    """PostgreSQL was unreachable or refused a request."""


class CryptoKeyError(DRError):
    """A key, identity or recipient is missing, malformed or does not decrypt."""

    exit_code = KEY_ERROR


class LockHeldError(DRError):
    """Another run holds the lock for this database and bucket."""

    exit_code = LOCK_HELD


class VerificationError(DRError):
    """A backup failed a verification check (checksum, restore, semantic check)."""

    exit_code = VERIFICATION_FAILED


class SetupError(DRError):
    """This machine's tooling cannot do the job: no PostgreSQL client that can, a client too
    old for the archive or the server, a server too old for the backup, no Prefect at the
    interpreter given. A fault of the set-up, never a verdict on a backup."""

    exit_code = SETUP


class Interrupted(DRError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_code = INTERRUPTED
