"""`block-key`: recover the Fernet key that decrypts Prefect's block documents from a backup.

A backup holds the key in one of two places (manifest ``block_key``):
- escrowed: the ``block-key`` artifact, when the server took its key from
  ``PREFECT_SERVER_ENCRYPTION_KEY`` (age-encrypted JSON ``{"fernet_key": ...}``);
- in the dump: the ``configuration`` row ``ENCRYPTION_KEY``. The dump is streamed through age
  and zstd into ``pg_restore --data-only --table=configuration --file=-``, which needs no
  database, and the row is read from its COPY output. Nothing is staged on disk.

The key never reaches a log, an exception or a manifest: it is registered with ``redact`` as
soon as it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from dataclasses import dataclass

from prefect_dr import crypto, interrupt, pipeline, redact, restore_stream
from prefect_dr.errors import DRError, Interrupted, NotFoundError, StorageError
from prefect_dr.manifest import ARTIFACT_BLOCK_KEY, ARTIFACT_DUMP, Artifact, Manifest
from prefect_dr.pg import tools
from prefect_dr.pg.dump import ClientProcess
from prefect_dr.storage.base import Storage

KEY_ROW = "ENCRYPTION_KEY"


@dataclass(frozen=True)
class RecoveredKey:
    """A block key and where in the backup it was found: "escrowed", or the dump
    (``ARTIFACT_DUMP``)."""

    key: str
    source: str

    def __repr__(self) -> str:  # never show the key itself
        return f"RecoveredKey(source={self.source!r})"


def recover(storage: Storage, manifest: Manifest, identities: list[crypto.Identity], *,
            pg_bin_dir: str | None = None) -> RecoveredKey:
    """The block encryption key ``manifest``'s backup holds.

    Raises NotFoundError when the backup holds none (the server had no key, or used one that
    was not given to prefect-dr), CryptoKeyError when the identity does not decrypt,
    VerificationError for damaged artifacts, StorageError, DRError when pg_restore fails.
    """
    escrow = manifest.artifact(ARTIFACT_BLOCK_KEY)
    if escrow is not None:
        key = str(json.loads(restore_stream.decrypt_small(storage, escrow,
                                                          identities))["fernet_key"])
        redact.register(key)
        return RecoveredKey(key, "escrowed")
    source = manifest.block_key.get("source")
    dump = manifest.artifact(ARTIFACT_DUMP)
    if source != "database" or dump is None:
        raise NotFoundError(f"backup {manifest.backup_id} holds no block encryption key "
                            f"(its manifest says the key came from {source or 'nowhere'}, "
                            "and none was escrowed)")
    key = _key_from_dump(storage, dump, identities, pg_bin_dir, manifest.pg_dump_version)
    if key is None:
        raise NotFoundError(f"the dump of backup {manifest.backup_id} has no configuration "
                            f"row {KEY_ROW}")
    return RecoveredKey(key, ARTIFACT_DUMP)


def _key_from_dump(storage: Storage, dump: Artifact, identities: list[crypto.Identity],
                   pg_bin_dir: str | None, dump_version: str | None) -> str | None:
    program = tools.pick_reader(pg_bin_dir, tools.major_of(dump_version)).path
    argv = [program, "--data-only", "--table=configuration", "--file=-"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = ClientProcess(argv, env, "pg_restore", stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    chunks: list[bytes] = []
    reader_thread = threading.Thread(target=lambda: chunks.append(proc.stdout.read()),
                                     daemon=True)
    reader_thread.start()
    try:
        with storage.open_reader(dump.location) as reader:
            pipeline.decrypt_from(reader, proc.stdin, identities,
                                  compressed=dump.compression == "zstd")
    except (BrokenPipeError, ConnectionResetError):
        pass  # pg_restore has what it needs (or failed: its own error is reported below)
    except (Interrupted, StorageError):
        proc.kill()
        raise
    except DRError:
        proc.kill()
        interrupt.raise_if_noted()
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    proc.wait()
    reader_thread.join()
    return key_from_copy(b"".join(chunks).decode("utf-8", errors="replace"))


def key_from_copy(sql_text: str) -> str | None:
    """The Fernet key in the ``configuration`` COPY block of pg_restore's SQL output."""
    lines = iter(sql_text.splitlines())
    for line in lines:
        if line.startswith("COPY ") and "configuration" in line.split("(")[0]:
            columns = [c.strip().strip('"') for c in
                       line[line.index("(") + 1:line.index(")")].split(",")]
            break
    else:
        return None
    if "key" not in columns or "value" not in columns:
        return None
    for line in lines:
        if line == "\\.":
            break
        fields = [_unescape(f) for f in line.split("\t")]
        if len(fields) != len(columns) or fields[columns.index("key")] != KEY_ROW:
            continue
        value = json.loads(fields[columns.index("value")])
        key = str(value.get("fernet_key", "")) if isinstance(value, dict) else ""
        if key:
            redact.register(key)
            return key
    return None


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unescape(text: str) -> str:
    """Undo COPY text-format escaping (backslash sequences)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
