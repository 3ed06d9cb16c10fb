"""What is in a backup's dump before any of it runs: its table of contents (``pg_restore -l``),
judged against what a Prefect database contains.

A Prefect database (3.0-3.9, checked on real dumps of 3.9.1) holds tables, their data,
indexes, constraints, enum types and the ``pg_trgm`` extension: no function, procedure,
trigger, rule or other object whose code runs. The restore plan lists every entry outside that
shape and refuses the executable ones unless ``--allow-foreign-objects``. This is a sanity
check of what the archive *declares*: a crafted archive can hide SQL in an entry of an
innocent kind, which is why the archive also always runs as the database's owner, never a
superuser (restore_plan's ``role`` check), and why the manifest that vouches for it is signed.

The table of contents sits at the start of a custom-format archive, so only the first part of
the dump is downloaded and decrypted (into ``pg_restore -l``, which stops after it).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from dataclasses import dataclass

from prefect_dr import crypto, interrupt, pipeline
from prefect_dr import prefect_schema as ps
from prefect_dr.errors import (
    CryptoKeyError,
    DRError,
    Interrupted,
    StorageError,
    VerificationError,
)
from prefect_dr.manifest import Artifact
from prefect_dr.storage.base import Storage

#: Kinds of entry a Prefect database's dump contains (and harmless kin of them).
PREFECT_KINDS = frozenset({
    "TABLE", "TABLE DATA", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "TYPE", "SEQUENCE",
    "SEQUENCE OWNED BY", "SEQUENCE SET", "DEFAULT", "COMMENT", "EXTENSION", "SCHEMA",
    "ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "DATABASE PROPERTIES"})
#: Kinds whose code runs, at restore or later inside Prefect's queries: refused.
EXECUTABLE_KINDS = frozenset({
    "FUNCTION", "PROCEDURE", "AGGREGATE", "TRIGGER", "EVENT TRIGGER", "RULE", "CAST",
    "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "PROCEDURAL LANGUAGE", "LANGUAGE",
    "TRANSFORM", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "VIEW", "POLICY",
    "ROW SECURITY", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION", "SUBSCRIPTION TABLE", "SERVER", "FOREIGN DATA WRAPPER", "USER MAPPING",
    "FOREIGN TABLE", "CONVERSION", "ACCESS METHOD", "DEFAULT ACL", "EXTENDED STATISTICS",
    "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "LARGE OBJECT", "BLOB", "BLOBS"})
#: Kinds a Prefect database lacks that run no code: listed, not refused.
INERT_KINDS = frozenset({
    "COLLATION", "DOMAIN", "ACL", "CHECK CONSTRAINT", "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY", "STATISTICS DATA", "INDEX ATTACH", "TABLE ATTACH"})
#: Every kind known, longest first, to split ``pg_restore -l`` lines.
_KINDS = sorted(PREFECT_KINDS | EXECUTABLE_KINDS | INERT_KINDS, key=len, reverse=True)
#: Extensions Prefect's migrations create (pg_trgm is trusted: the owner may create it).
PREFECT_EXTENSIONS = frozenset({"pg_trgm", "plpgsql"})
#: Tables of Prefect 3.x databases, runtime ones and those of older releases included.
PREFECT_TABLES = frozenset(ps.CONFIG_TABLES) | frozenset(ps.HISTORY_TABLES) | frozenset({
    "agent", "automation_bucket", "automation_event_follower", "automation_held_event",
    "composite_trigger_child_firing", "csrf_token", "task_run_state_cache", "worker",
    "flow_run_notification_policy", "flow_run_notification_queue"})
#: How much of the decrypted archive ``pg_restore -l`` may read before giving up.
TOC_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One line of an archive's table of contents."""

    kind: str
    schema: str
    name: str

    def __str__(self) -> str:
        where = f"{self.schema}." if self.schema not in ("", "-") else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class Verdict:
    """The entries a Prefect database would not contain; the executable ones among them."""

    entries: int
    foreign: tuple[Entry, ...]
    executable: tuple[Entry, ...]


def parse(listing: str) -> list[Entry]:
    """The entries of a ``pg_restore -l`` listing (comment lines skipped)."""
    out = []
    for line in listing.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        _, _, rest = line.partition(";")
        words = rest.split()[2:]  # past the catalog oid and object oid
        text = " ".join(words)
        kind = next((k for k in _KINDS if text == k or text.startswith(k + " ")),
                    words[0] if words else "")
        tail = text[len(kind):].split()
        schema = tail[0] if tail else ""
        name = " ".join(tail[1:-1]) if len(tail) > 2 else " ".join(tail[1:])
        out.append(Entry(kind, schema, name))
    return out


def judge(entries: list[Entry]) -> Verdict:
    """Which entries a Prefect database would not contain, and which of those run code (an
    unknown kind counts as running code: what is not understood is not trusted)."""
    foreign, executable = [], []
    for e in entries:
        if e.kind == "EXTENSION":
            if e.name not in PREFECT_EXTENSIONS:  # its script runs at CREATE EXTENSION
                foreign.append(e)
                executable.append(e)
        elif e.kind in PREFECT_KINDS:
            if (e.kind in ("TABLE", "TABLE DATA") and (
                    e.schema != "public" or e.name not in PREFECT_TABLES)) or (
                    e.kind == "SCHEMA" and e.name != "public"):
                foreign.append(e)
        else:
            foreign.append(e)
            if e.kind not in INERT_KINDS:
                executable.append(e)
    return Verdict(len(entries), tuple(foreign), tuple(executable))


def read(storage: Storage, artifact: Artifact, identities: list[crypto.Identity],
         pg_restore: str) -> list[Entry]:
    """The table of contents of the dump ``artifact``: the start of it decrypted into
    ``pg_restore -l``. Raises VerificationError when it is not a readable archive,
    CryptoKeyError, StorageError, Interrupted."""
    proc = subprocess.Popen([pg_restore, "-l"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failure: list[Exception] = []

    def feed() -> None:
        try:
            with storage.open_reader(artifact.location) as reader:
                pipeline.decrypt_from(_Limited(reader), proc.stdin, identities,
                                      compressed=artifact.compression == "zstd")
        except (BrokenPipeError, ConnectionResetError, ValueError):
            pass  # pg_restore has read the table of contents and stopped
        except Interrupted:
            pass  # the caller raises it (interrupt.raise_if_noted below)
        except (CryptoKeyError, VerificationError, StorageError, OSError) as exc:
            failure.append(exc)  # handed to the caller
        finally:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # type: ignore[union-attr]

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    listing = proc.stdout.read()  # type: ignore[union-attr]
    errors = proc.stderr.read()  # type: ignore[union-attr]
    proc.wait()
    thread.join(timeout=30)
    interrupt.raise_if_noted()
    if proc.returncode != 0:
        if failure and isinstance(failure[0], DRError):
            raise failure[0]
        first = (errors.decode(errors="replace").strip().splitlines() or ["no output"])[0]
        raise VerificationError(f"the dump of this backup is not a readable archive: {first}")
    return parse(listing.decode(errors="replace"))


class _Limited:
    """A reader that ends after TOC_LIMIT bytes of ciphertext (a table of contents larger
    than that is not a Prefect database's)."""

    def __init__(self, reader: object) -> None:
        self.reader = reader
        self.left = TOC_LIMIT

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.reader.read(n)  # type: ignore[attr-defined]
        self.left -= len(data)
        return data
