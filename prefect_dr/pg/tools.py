"""The PostgreSQL client programs (pg_dump, pg_restore, psql): where they are, which version,
and which one each operation uses.

Clients are looked for, in this order, in the folders of ``PREFECT_DR_PG_BIN_DIR`` (a
``:``-separated list), in ``/usr/lib/postgresql/*/bin`` (Debian's side-by-side majors, newest
first) and on ``PATH``. Each operation then picks its own:

- ``pg_dump`` must be at least the server's major; the server's own major is preferred, else the
  oldest one that is new enough;
- ``pg_restore`` must be at least the major of the ``pg_dump`` that wrote the archive (an older
  one stops at "unsupported version in file header"). pg_restore 17 and later send
  ``SET transaction_timeout = 0``, which PostgreSQL 14-16 reject; against such a server a client
  older than 17 is preferred, and when only a 17+ client can read the archive its script is
  streamed through ``psql`` of the same folder with that one statement left out
  (:mod:`prefect_dr.pg.restore`), still stopping at the first error.

A missing or unsuitable client is a :class:`~prefect_dr.errors.SetupError` (exit 16): a fault of
this machine's tooling, never of a backup.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from prefect_dr.errors import SetupError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
#: Debian's side-by-side installs (postgresql-client-NN).
SYSTEM_GLOB = "/usr/lib/postgresql/*/bin"
#: pg_restore from this major on sends ``SET transaction_timeout = 0``; servers from this major
#: on know that parameter.
TRANSACTION_TIMEOUT_SINCE = 17
PROGRAMS = ("pg_dump", "pg_restore", "psql")


@dataclass(frozen=True)
class Client:
    """One client program found on this machine."""

    program: str
    path: str
    major: int
    text: str  # version text, e.g. "15.18 (Debian 15.18-0+deb12u1)"

    @property
    def folder(self) -> str:
        """The folder it was found in."""
        return str(Path(self.path).parent)

    def describe(self) -> str:
        """e.g. ``pg_dump 15.18 (/usr/lib/postgresql/15/bin)``."""
        return f"{self.program} {self.text.split(' ')[0]} ({self.folder})"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (recorded in manifests and printed by doctor)."""
        return {"program": self.program, "path": self.path, "major": self.major,
                "version": self.text}


@dataclass(frozen=True)
class RestoreChoice:
    """The pg_restore a restore uses and, when its script must be filtered, the psql that
    runs it."""

    pg_restore: Client
    psql: Client | None = None
    reason: str = ""

    @property
    def filtered(self) -> bool:
        """Whether the script is streamed through psql without ``SET transaction_timeout``."""
        return self.psql is not None

    def describe(self) -> str:
        """One line for plans, doctor and logs."""
        text = self.pg_restore.describe()
        if self.psql is not None:
            text += (" through psql, without its SET transaction_timeout (the server predates "
                     f"PostgreSQL {TRANSACTION_TIMEOUT_SINCE})")
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"pg_restore": self.pg_restore.to_dict(),
                "psql": self.psql.to_dict() if self.psql else None,
                "filtered": self.filtered}


def _major_key(folder: str) -> int:
    match = re.search(r"/(\d+)/bin$", folder)
    return int(match.group(1)) if match else 0


def search_dirs(bin_dirs: str | None) -> list[str]:
    """Every folder searched, in order, without duplicates."""
    folders = [d for d in (bin_dirs or "").split(":") if d]
    folders += sorted(glob.glob(SYSTEM_GLOB), key=_major_key, reverse=True)
    folders += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    out: list[str] = []
    for folder in folders:
        if folder not in out:
            out.append(folder)
    return out


@functools.lru_cache(maxsize=64)
def _version_cached(path: str, _mtime: int) -> tuple[int, str]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION_RE.search(out)
    if not match:
        raise SetupError(f"cannot read the version of {path} from {out!r}")
    return int(match.group(1)), out.split("(PostgreSQL)")[-1].strip()


def version(path: str) -> tuple[int, str]:
    """Return (major, version text) of a PostgreSQL client program. Raises SetupError."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise SetupError(f"cannot run {path}: {exc.strerror}") from None
    return _version_cached(path, mtime)


def found(program: str, bin_dirs: str | None = None) -> list[Client]:
    """Every copy of ``program`` in the search folders (one per real file), in search order."""
    out: list[Client] = []
    seen: set[str] = set()
    for folder in search_dirs(bin_dirs):
        path = os.path.join(folder, program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            major, text = version(path)
        except SetupError:
            continue  # a broken copy (missing libraries) is as good as none
        out.append(Client(program, path, major, text))
    return out


def inventory(bin_dirs: str | None = None) -> dict[str, list[Client]]:
    """Every client program found, by program name."""
    return {program: found(program, bin_dirs) for program in PROGRAMS}


def find(program: str, bin_dir: str | None = None) -> str:
    """The first ``program`` in the search folders (any version). Raises SetupError."""
    clients = found(program, bin_dir)
    if not clients:
        raise SetupError(f"{program} not found in {_where(bin_dir)}; install the PostgreSQL "
                         "client (Debian: apt-get install postgresql-client) or add its bin "
                         "folder to PREFECT_DR_PG_BIN_DIR")
    return clients[0].path


def _where(bin_dirs: str | None) -> str:
    return ("PREFECT_DR_PG_BIN_DIR, " if bin_dirs else "") + f"{SYSTEM_GLOB} or PATH"


def _listing(clients: list[Client]) -> str:
    return ", ".join(c.describe() for c in clients) or "none"


#: The PostgreSQL major each Debian release ships itself; any other major's client package
#: comes from the PostgreSQL project's apt repository (as the Dockerfile installs them).
DEBIAN_OWN_MAJOR = {"bookworm (12)": 15, "trixie (13)": 17}


def _install_hint(major: int) -> str:
    own = [release for release, m in DEBIAN_OWN_MAJOR.items() if m == major]
    where = (f"Debian {own[0]}: apt-get install postgresql-client-{major}" if own else
             f"Debian/Ubuntu: postgresql-client-{major} from the PostgreSQL apt repository, "
             "https://wiki.postgresql.org/wiki/Apt")
    return (f"install the PostgreSQL {major} client ({where}) or add its bin folder to "
            "PREFECT_DR_PG_BIN_DIR")


def pick_dump(bin_dirs: str | None, server_major: int, server_text: str = "") -> Client:
    """The pg_dump for a server of ``server_major``: its own major, else the oldest newer one.
    Raises SetupError when none is new enough."""
    clients = found("pg_dump", bin_dirs)
    able = [c for c in clients if c.major >= server_major]
    if not able:
        raise SetupError(f"no pg_dump can dump PostgreSQL {server_text or server_major} (found: "
                         f"{_listing(clients)}; pg_dump must be at least the server's major): "
                         + _install_hint(server_major))
    same = [c for c in able if c.major == server_major]
    return (same or sorted(able, key=lambda c: c.major))[0]


def sends_rejected_timeout(client_major: int, server_major: int) -> bool:
    """Whether pg_restore ``client_major`` sends a SET that a ``server_major`` server rejects."""
    return client_major >= TRANSACTION_TIMEOUT_SINCE > server_major


def pick_restore(bin_dirs: str | None, *, archive_major: int | None, server_major: int,
                 server_text: str = "") -> RestoreChoice:
    """The pg_restore for an archive written by pg_dump ``archive_major`` into a server of
    ``server_major`` (see the module docstring). Raises SetupError when none can."""
    clients = found("pg_restore", bin_dirs)
    readers = [c for c in clients if archive_major is None or c.major >= archive_major]
    if not readers:
        need = archive_major or server_major
        raise SetupError(f"no pg_restore can read an archive written by pg_dump {need} "
                         f"(found: {_listing(clients)}): " + _install_hint(need))
    clean = [c for c in readers if not sends_rejected_timeout(c.major, server_major)]
    if clean:
        same = [c for c in clean if c.major == server_major]
        best = (same or sorted(clean, key=lambda c: c.major))[0]
        return RestoreChoice(best, None, "reads the archive and suits the server")
    psqls = {c.folder: c for c in found("psql", bin_dirs)}
    for client in sorted(readers, key=lambda c: c.major):
        psql = psqls.get(client.folder)
        if psql is not None and psql.major == client.major:
            return RestoreChoice(client, psql, "only a 17+ client reads the archive")
    raise SetupError(f"pg_restore {_listing(readers)} sends SET transaction_timeout, which "
                     f"PostgreSQL {server_text or server_major} rejects, and no psql of the same "
                     "version is beside it to run a filtered script: install psql in that "
                     "folder, or restore into PostgreSQL "
                     f"{TRANSACTION_TIMEOUT_SINCE} or newer")


def pick_reader(bin_dirs: str | None, archive_major: int | None) -> Client:
    """A pg_restore that reads an archive of ``archive_major`` (no server involved)."""
    choice = pick_restore(bin_dirs, archive_major=archive_major,
                          server_major=TRANSACTION_TIMEOUT_SINCE)
    return choice.pg_restore


def downgrade_note(source_text: str | None, server_major: int,
                   server_text: str) -> str | None:
    """A warning when a backup of a newer major is restored into an older server: PostgreSQL
    does not guarantee it (Prefect's schema loads; the restore's own checks prove the rest)."""
    source = major_of(source_text)
    if source is None or source <= server_major:
        return None
    return (f"the backup was taken from PostgreSQL {source_text} and the target runs "
            f"PostgreSQL {server_text}: an older major, which PostgreSQL does not guarantee; "
            "the restore's checks prove the result")


def major_of(version_text: str | None) -> int | None:
    """The major version in a version text such as '15.18 (Debian 15.18-0+deb12u1)'."""
    match = re.match(r"\s*(\d+)", version_text or "")
    return int(match.group(1)) if match else None
