"""Reading a backup's artifacts back, checked on the way: the small ones (configuration
export, escrowed block key) decrypted into memory, the dump streamed into pg_restore or staged
in a private file for a parallel ``pg_restore --jobs``. Shared by verify, restore and
restore-config; each read is recorded as an ``integrity`` (and ``restore``) check."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect_dr import crypto, export, interrupt, pipeline
from prefect_dr.checks import Check, Checks
from prefect_dr.config import Settings
from prefect_dr.errors import CryptoKeyError, DatabaseError, DRError, Interrupted, StorageError
from prefect_dr.lock import pid_alive
from prefect_dr.manifest import (
    ARTIFACT_BLOCK_KEY,
    ARTIFACT_CONFIG,
    ARTIFACT_DUMP,
    Artifact,
    Manifest,
)
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import restore as pgr
from prefect_dr.pg import tools
from prefect_dr.pg.tools import RestoreChoice
from prefect_dr.storage.base import Storage
from prefect_dr.units import human_bytes

log = logging.getLogger(__name__)
STAGING_PREFIX = "prefect-dr-restore-"


def expected_stats(a: Artifact) -> pipeline.StreamStats:
    """The sizes and digests the manifest promises for ``a`` (checked while streaming)."""
    return pipeline.StreamStats(a.plaintext_size, a.plaintext_sha256, a.size, a.sha256)


def decrypt_small(storage: Storage, artifact: Artifact,
                  identities: list[crypto.Identity]) -> bytes:
    """Download, check and decrypt a small artifact into memory. Raises CryptoKeyError,
    VerificationError (size or digest mismatch), StorageError."""
    out = io.BytesIO()
    with storage.open_reader(artifact.location) as reader:
        pipeline.decrypt_from(reader, out, identities, compressed=artifact.compression == "zstd",
                              expect=expected_stats(artifact))
    return out.getvalue()


def read_small_artifacts(storage: Storage, manifest: Manifest,
                         identities: list[crypto.Identity], checks: Checks
                         ) -> tuple[dict[str, Any] | None, str | None]:
    """Check and decrypt every artifact but the dump and the history tables' data (streamed
    and checked as they load, possibly in phase 2: never read whole into memory, nor twice);
    return (export, escrowed block key)."""
    export_doc: dict[str, Any] | None = None
    escrowed: str | None = None
    for artifact in manifest.artifacts:
        if artifact.name == ARTIFACT_DUMP or artifact.table:
            continue
        with checks.run("integrity", artifact.name) as out:
            data = decrypt_small(storage, artifact, identities)
            out["detail"] = (f"{human_bytes(artifact.size)}, sha256 ok, decrypted, "
                             "plaintext sha256 ok")
        if artifact.name == ARTIFACT_CONFIG:
            with checks.run("export format", artifact.name):
                export_doc = export.parse(data, f"configuration export of {manifest.backup_id}")
        elif artifact.name == ARTIFACT_BLOCK_KEY:
            escrowed = str(json.loads(data)["fernet_key"])
    return export_doc, escrowed


def choose(settings: Settings, manifest: Manifest, server_major: int,
           server_text: str) -> RestoreChoice:
    """The pg_restore (and psql) that loads ``manifest``'s dump into a server of
    ``server_major``, checked before any work. Raises SetupError (exit 16) for an impossible
    combination: no client that reads the archive and suits the server."""
    return tools.pick_restore(settings.pg_bin_dir,
                              archive_major=tools.major_of(manifest.pg_dump_version),
                              server_major=server_major, server_text=server_text)


def choose_for(settings: Settings, manifest: Manifest, url: str) -> RestoreChoice:
    """:func:`choose` for the server at ``url``. Raises DatabaseError, SetupError."""
    with pgc.connect(url) as conn:
        major, text = pgc.server_version(conn)
    note = tools.downgrade_note(manifest.postgres_version, major, text)
    if note:
        log.warning("%s", note)
    return choose(settings, manifest, major, text)


def restore_dump(storage: Storage, artifact: Artifact, identities: list[crypto.Identity],
                 url: str, choice: RestoreChoice, progress: pipeline.Progress | None,
                 checks: Checks, role: str | None = None) -> None:
    """Stream the dump into pg_restore: integrity and restore in one pass.

    Records an ``integrity`` and a ``restore`` check; raises the DRError of a failed one
    (SetupError when the client, not the backup, is at fault).
    """
    start = time.monotonic()
    proc = pgr.start(url, choice, role=role)
    integrity_error: DRError | None = None
    try:
        with storage.open_reader(artifact.location) as reader:
            pipeline.decrypt_from(reader, proc.stdin, identities,
                                  compressed=artifact.compression == "zstd",
                                  expect=expected_stats(artifact), progress=progress)
    except (BrokenPipeError, ConnectionResetError):
        pass  # pg_restore stopped reading: its own error is reported below
    except (Interrupted, StorageError):
        proc.kill()
        raise
    except DRError as exc:
        proc.kill()
        interrupt.raise_if_noted()  # a stop a library wrapped: pg_restore is stopped too
        integrity_error = exc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if integrity_error is not None:
        checks.report.key_error = isinstance(integrity_error, CryptoKeyError)
        checks.report.checks.append(Check("integrity", False, integrity_error.message,
                                          round(time.monotonic() - start, 3), ARTIFACT_DUMP))
        raise integrity_error
    checks.report.checks.append(Check(
        "integrity", True,
        f"{human_bytes(artifact.size)}, sha256 ok, decrypted, plaintext sha256 ok",
        round(time.monotonic() - start, 3), ARTIFACT_DUMP))
    with checks.run("restore", ARTIFACT_DUMP) as out:
        try:
            proc.wait()
        except DatabaseError as exc:
            pgr.raise_setup(exc)
            raise
        out["detail"] = f"restored with {choice.describe()}"


def remove_stale_staging(staging_dir: str) -> list[str]:
    """Delete staged dumps whose process is gone (a SIGKILLed restore): they hold plaintext."""
    removed = []
    for path in Path(staging_dir).glob(f"{STAGING_PREFIX}*.dump"):
        pid_text = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
                log.warning("removed %s, staged by a restore that no longer runs", path)
    return removed


def restore_dump_staged(storage: Storage, artifact: Artifact,
                        identities: list[crypto.Identity], url: str, choice: RestoreChoice,
                        progress: pipeline.Progress | None, checks: Checks, *,
                        jobs: int, staging_dir: str, role: str | None = None) -> None:
    """Decrypt the dump to a private file with no name (it vanishes with the last descriptor,
    even when this process is SIGKILLed: no plaintext is ever left behind, I5), checking its
    integrity, then restore it with ``pg_restore --jobs`` reading ``/dev/fd/N``: parallel data
    loading and index builds.

    Records an ``integrity`` and a ``restore`` check; raises the DRError of a failed one.
    """
    remove_stale_staging(staging_dir)
    fd = anonymous_file(staging_dir)
    try:
        with checks.run("integrity", ARTIFACT_DUMP) as out, \
                os.fdopen(os.dup(fd), "wb") as staged, \
                storage.open_reader(artifact.location) as reader:
            pipeline.decrypt_from(reader, staged, identities,
                                  compressed=artifact.compression == "zstd",
                                  expect=expected_stats(artifact), progress=progress)
            out["detail"] = (f"{human_bytes(artifact.size)}, sha256 ok, decrypted, plaintext "
                             f"sha256 ok (staged {human_bytes(artifact.plaintext_size)})")
        with checks.run("restore", ARTIFACT_DUMP) as out:
            how = pgr.run_file(url, choice, f"/dev/fd/{fd}", jobs=jobs, role=role,
                               pass_fds=(fd,))
            out["detail"] = f"{how} succeeded ({choice.describe()})"
    finally:
        os.close(fd)


def anonymous_file(folder: str) -> int:
    """A read-write descriptor of a new 0600 file in ``folder`` that has no name: O_TMPFILE,
    or (a file system without it) a named file unlinked at once. Raises OSError."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR,
                                                          errno.EINVAL):
            raise
    fd, path = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".dump",
                                dir=folder)
    os.unlink(path)
    return fd
