"""The PostgreSQL client programs (pg_dump, pg_restore, psql): where they are, which version."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prefect_dr.errors import DRError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def find(program: str, bin_dir: str | None = None) -> str:
    """Return the path of ``program`` (from ``bin_dir`` or PATH). Raises DRError if missing."""
    if bin_dir:
        candidate = Path(bin_dir) / program
        if candidate.is_file():
            return str(candidate)
        raise DRError(f"{program} not found in {bin_dir} (PREFECT_DR_PG_BIN_DIR)")
    found = shutil.which(program)
    if not found:
        raise DRError(f"{program} not found on PATH; install the PostgreSQL client "
                      "(Debian: apt-get install postgresql-client) or set PREFECT_DR_PG_BIN_DIR")
    return found


def version(path: str) -> tuple[int, str]:
    """Return (major, version text) of a PostgreSQL client program. Raises DRError."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise DRError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION_RE.search(out)
    if not match:
        raise DRError(f"cannot read the version of {path} from {out!r}")
    return int(match.group(1)), out.split("(PostgreSQL)")[-1].strip()


def major_of(version_text: str | None) -> int | None:
    """The major version in a version text such as '15.18 (Debian 15.18-0+deb12u1)'."""
    match = re.match(r"\s*(\d+)", version_text or "")
    return int(match.group(1)) if match else None
