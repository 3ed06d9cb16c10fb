"""pg_dump as a streamed subprocess: never a password in argv, stderr kept for the error."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

from prefect_dr import redact
from prefect_dr.errors import DatabaseError


def split_password(url: str) -> tuple[str, str | None]:
    """Return (url without password, password or None) so the password can go by env.

    The password comes back decoded (a URL holds it percent-encoded; PGPASSWORD holds it as
    it is)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return (urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)),
            unquote(parts.password))


#: What a libpq client program (pg_dump, pg_restore, psql) is given of prefect-dr's
#: environment: libpq's own PG* variables and the basics, nothing else. Cloud credentials, the
#: block key and notification URLs never reach a child that does not need them (I4).
CLIENT_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR",
                              "LD_LIBRARY_PATH"})


def client_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The part of ``base`` a libpq client program may see (CLIENT_ENV_NAMES, LC_*, PG*)."""
    return {k: v for k, v in base.items()
            if k in CLIENT_ENV_NAMES or k.startswith(("LC_", "PG"))}


def child_env(url: str, base: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The URL to put in argv and the environment for a libpq client program (only what
    :func:`client_environment` keeps, plus the URL's password as PGPASSWORD)."""
    clean, password = split_password(url)
    env = client_environment(os.environ if base is None else base)
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return clean, env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: have the kernel SIGKILL this child when prefect-dr dies, even by SIGKILL, so no
    orphaned pg_dump/pg_restore keeps working on a half-made database or a staged file."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: children may outlive a killed parent


PR_SET_PDEATHSIG = 1


class ClientProcess:
    """A PostgreSQL client program whose stdout is a stream; stderr tail kept for errors.

    Use as a context manager: leaving the block early kills the program.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], what: str,
                 stdin: int | None = None, stdout: int | None = subprocess.PIPE,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.what = what
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self.proc = subprocess.Popen(list(argv), stdout=stdout,
                                     stderr=subprocess.PIPE, stdin=stdin, env=dict(env),
                                     preexec_fn=_die_with_parent, pass_fds=pass_fds)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def stdout(self) -> IO[bytes]:
        """The program's standard output."""
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        """The program's standard input (when started with stdin=PIPE)."""
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr.append(redact.redact(line))

    def stderr_tail(self) -> str:
        """The most telling stderr line (an 'error:' line if any, else the last)."""
        lines = list(self._stderr)
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["no output"])[0 if errors else -1]

    def wait(self) -> None:
        """Wait for a clean exit. Raises DatabaseError with the program's own reason."""
        rc = self.proc.wait()
        self._reader.join(timeout=5)
        if rc != 0:
            raise DatabaseError(f"{self.what} failed (exit {rc}): {self.stderr_tail()}")

    def kill(self) -> None:
        """Stop the program if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def dump_argv(pg_dump: str, url: str, *, snapshot: str | None,
              exclude_data: Sequence[str] = (), exclude_schemas: Sequence[str] = ()
              ) -> list[str]:
    """The pg_dump command line: custom format, uncompressed (zstd does that), no password;
    without the data of ``exclude_data`` (public tables) nor the ``exclude_schemas``."""
    argv = [pg_dump, "--format=custom", "--compress=0", "--no-password", "--dbname", url]
    if snapshot:
        argv += ["--snapshot", snapshot]
    for table in exclude_data:
        argv += ["--exclude-table-data", f"public.{table}"]
    for schema in exclude_schemas:
        argv += ["--exclude-schema", schema]
    return argv
