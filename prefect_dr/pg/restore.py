"""pg_restore fed from a stream (stdin) or a staged file, with its errors reported in one line.

With a direct choice pg_restore connects to the database itself. With a filtered choice (a
17+ pg_restore into PostgreSQL 14-16, see :mod:`prefect_dr.pg.tools`) pg_restore writes its
SQL script, the one ``SET transaction_timeout = 0`` older servers reject is left out, and psql
of the same version runs the rest with ``ON_ERROR_STOP``: the first error still stops the load,
exactly as ``--exit-on-error`` does.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Mapping
from typing import IO

from prefect_dr.errors import DatabaseError, SetupError
from prefect_dr.pg import dump
from prefect_dr.pg.dump import ClientProcess
from prefect_dr.pg.tools import RestoreChoice

#: The statement pg_restore 17+ emits that PostgreSQL 14-16 reject.
REJECTED_SET = b"SET transaction_timeout = 0;"
#: What pg_restore or psql say when the client cannot handle the archive or the server: a
#: fault of the set-up, not of the backup.
SETUP_SIGNS = ("unsupported version", "unrecognized configuration parameter",
               "server version mismatch")


def restore_argv(pg_restore: str, url: str | None, *, jobs: int = 1, file: str | None = None,
                 role: str | None = None) -> list[str]:
    """pg_restore into ``url`` (or, without one, its script on stdout): no owners or grants from
    the source, stop at the first error; with ``role``, objects are created as that role (SET
    ROLE), e.g. the live database's owner."""
    argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password"]
    argv += ["--dbname", url] if url else ["--file=-"]
    if role:
        argv += ["--role", role]
    if jobs > 1 and url:
        argv += ["--jobs", str(jobs)]
    if file:
        argv.append(file)
    return argv


def psql_argv(psql: str, url: str) -> list[str]:
    """psql running a script from stdin, stopping at the first error, no password prompt."""
    return [psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--dbname", url]


def filter_script(source: IO[bytes], sink: IO[bytes]) -> int:
    """Copy a pg_restore script, leaving out ``SET transaction_timeout = 0;`` outside COPY
    data. Returns how many statements were left out."""
    dropped = 0
    in_copy = False
    for line in source:
        if in_copy:
            in_copy = line.rstrip(b"\r\n") != b"\\."
        elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
            in_copy = True
        elif line.rstrip() == REJECTED_SET:
            dropped += 1
            continue
        sink.write(line)
    return dropped


def raise_setup(exc: DatabaseError) -> None:
    """Re-raise a client failure that is the set-up's fault as SetupError (exit 16)."""
    if any(sign in exc.message for sign in SETUP_SIGNS):
        raise SetupError(f"{exc.message} (a client/server version problem, not a fault of the "
                         "backup: see 'prefect-dr doctor')") from None


class FilteredRestore:
    """pg_restore's script piped through :func:`filter_script` into psql; the same interface
    as a streamed ClientProcess (``stdin``, ``wait``, ``kill``)."""

    def __init__(self, choice: RestoreChoice, url: str, *, file: str | None = None,
                 env: Mapping[str, str] | None = None, role: str | None = None,
                 pass_fds: tuple[int, ...] = ()) -> None:
        assert choice.psql is not None
        clean, child_env = dump.child_env(url, env)
        self.restore = ClientProcess(
            restore_argv(choice.pg_restore.path, None, file=file, role=role), child_env,
            "pg_restore", stdin=subprocess.DEVNULL if file else subprocess.PIPE,
            pass_fds=pass_fds)
        self.psql = ClientProcess(psql_argv(choice.psql.path, clean), child_env, "psql",
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.dropped = 0
        self._pump = threading.Thread(target=self._run_pump, daemon=True)
        self._pump.start()

    @property
    def stdin(self) -> IO[bytes]:
        """Where the archive is written (when streamed)."""
        return self.restore.stdin

    def _run_pump(self) -> None:
        try:
            self.dropped = filter_script(self.restore.stdout, self.psql.stdin)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self.restore.kill()  # psql stopped (its error is reported by wait)
        finally:
            with contextlib.suppress(OSError, ValueError):
                self.psql.stdin.close()

    def wait(self) -> None:
        """Wait for both; raises DatabaseError with psql's reason first (its error is the
        load's), else pg_restore's."""
        self._pump.join()
        try:
            self.psql.wait()
        except DatabaseError:
            self.restore.kill()
            raise
        self.restore.wait()

    def kill(self) -> None:
        """Stop both programs if they still run."""
        self.restore.kill()
        self.psql.kill()


def start(url: str, choice: RestoreChoice, *, env: Mapping[str, str] | None = None,
          role: str | None = None) -> ClientProcess | FilteredRestore:
    """Start the chosen pg_restore reading an archive on stdin, into the database at ``url``."""
    if choice.filtered:
        return FilteredRestore(choice, url, env=env, role=role)
    clean, child_env = dump.child_env(url, env)
    return ClientProcess(restore_argv(choice.pg_restore.path, clean, role=role), child_env,
                         "pg_restore", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def run_file(url: str, choice: RestoreChoice, path: str, *, jobs: int,
             role: str | None = None, pass_fds: tuple[int, ...] = ()) -> str:
    """Restore a staged archive file (``--jobs`` when direct; one stream when filtered);
    ``pass_fds`` keeps descriptors open in pg_restore (``path`` may be ``/dev/fd/N``).
    Returns what was done. Raises DatabaseError, SetupError."""
    if choice.filtered:
        proc: ClientProcess | FilteredRestore = FilteredRestore(choice, url, file=path,
                                                                role=role, pass_fds=pass_fds)
        how = "pg_restore through psql (one job: the script is filtered)"
    else:
        clean, child_env = dump.child_env(url)
        proc = ClientProcess(restore_argv(choice.pg_restore.path, clean, jobs=jobs, file=path,
                                          role=role),
                             child_env, "pg_restore", stdout=subprocess.DEVNULL,
                             pass_fds=pass_fds)
        how = f"pg_restore --jobs {jobs}"
    try:
        proc.wait()
    except DatabaseError as exc:
        raise_setup(exc)
        raise
    except BaseException:
        proc.kill()
        raise
    return how
