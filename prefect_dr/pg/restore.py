"""pg_restore fed from a stream (stdin), with its errors reported in one line."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from prefect_dr.pg import dump, tools
from prefect_dr.pg.dump import ClientProcess


def restore_argv(pg_restore: str, url: str, *, jobs: int = 1, file: str | None = None,
                 role: str | None = None) -> list[str]:
    """pg_restore into ``url``: no owners or grants from the source, stop at the first error;
    with ``role``, objects are created as that role (SET ROLE), e.g. the live database's owner."""
    argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
            "--dbname", url]
    if role:
        argv += ["--role", role]
    if jobs > 1:
        argv += ["--jobs", str(jobs)]
    if file:
        argv.append(file)
    return argv


def start(url: str, *, bin_dir: str | None = None, env: Mapping[str, str] | None = None,
          role: str | None = None) -> ClientProcess:
    """Start pg_restore reading an archive on stdin, into the database at ``url``."""
    program = tools.find("pg_restore", bin_dir)
    clean, child_env = dump.child_env(url, env)
    return ClientProcess(restore_argv(program, clean, role=role), child_env, "pg_restore",
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
