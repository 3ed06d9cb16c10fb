"""A repository in a local directory or on an NFS share (``file:///ABS/PATH``).

Every object is a file under the repository directory, at the path its key names. A write goes
to a hidden temporary file beside its target (``.NAME.<id>.partial``), is fsynced, renamed over
the target and the directory fsynced: a reader sees either nothing or the whole object, also on
NFS (rename and link are atomic on the server). ``put_if_absent`` uses ``link``, which fails
when the name exists (the NFS-safe form of O_EXCL). Temporary files are the backend's
"incomplete uploads": listed, and removed by ``abort_incomplete_upload`` (prune does so).

The repository directory itself must exist: an unmounted share must fail the backup, not fill
the local disk below the mount point.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from prefect_dr.errors import NotFoundError, StorageError
from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, Storage, Writer

_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.(?P<id>[0-9a-f]{32})\.partial$")


def _partial_name(name: str, upload_id: str) -> str:
    return f".{name}.{upload_id}.partial"


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink in it is durable (not every filesystem
    allows opening a directory: then the rename's own durability is all there is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)


class FileStorage(Storage):
    """Objects as files under one directory (local disk or an NFS mount)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.description = f"file://{self.root}"

    # -- paths -----------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The file holding ``key``. Raises StorageError for a key that would leave the
        repository or clash with a temporary file."""
        parts = key.split("/")
        if (not key or key.startswith("/") or "\0" in key
                or any(p in ("", ".", "..") for p in parts) or _PARTIAL_RE.match(parts[-1])):
            raise StorageError(f"{self.description}: {key!r} is not a valid object key")
        return self.root.joinpath(*parts)

    def _error(self, exc: OSError, action: str, key: str) -> StorageError:
        where = f"{self.description}/{key}" if key else self.description
        if exc.errno == errno.ENOSPC:
            return StorageError(f"{action} {where}: no space left on the device")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorageError(f"{action} {where}: permission denied (the repository "
                                "directory must be writable by this user)")
        return StorageError(f"{action} {where}: {exc.strerror or exc}")

    def _require_root(self, action: str) -> None:
        if not self.root.is_dir():
            raise NotFoundError(f"{action} {self.description}: directory {self.root} does not "
                                "exist (create it, or mount the share)")

    # -- interface -------------------------------------------------------------------------
    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> Writer:
        return FileWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        path = self.path_of(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no object {key} in {self.description}") from None
        except IsADirectoryError:
            raise NotFoundError(f"no object {key} in {self.description}") from None
        except OSError as exc:
            raise self._error(exc, "read", key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error(exc, "stat", key) from None
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=st.st_size, last_modified=_mtime(st),
                          etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    def _walk(self, prefix: str, *, partial: bool) -> Iterator[tuple[str, Path, os.stat_result]]:
        """(key, path, stat) of every object (or, with ``partial``, temporary file) whose key
        starts with ``prefix``, unordered."""
        self._require_root("list")
        base = prefix.rpartition("/")[0]
        start = self.path_of(base) if base else self.root
        stack = [(start, base + "/" if base else "")]
        while stack:
            folder, key_base = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise self._error(exc, "list", key_base) from None
            for entry in entries:
                match = _PARTIAL_RE.match(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    key = key_base + entry.name + "/"
                    if key.startswith(prefix) or prefix.startswith(key):
                        stack.append((Path(entry.path), key))
                    continue
                if not entry.is_file(follow_symlinks=False) or bool(match) != partial:
                    continue
                key = key_base + (match.group("name") if match else entry.name)
                if key.startswith(prefix):
                    try:
                        yield key, Path(entry.path), entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted (or renamed into place) while listing

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        found = sorted(self._walk(prefix, partial=False), key=lambda item: item[0])
        for key, _, st in found:
            yield ObjectInfo(key=key, size=st.st_size, last_modified=_mtime(st),
                             etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "delete", key) from None
        _fsync_dir(path.parent)
        self._prune_dirs(path.parent)

    def _prune_dirs(self, folder: Path) -> None:
        """Remove now-empty folders between ``folder`` and the root (a writer that loses
        the race retries its mkdir)."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def put_if_absent(self, key: str, data: bytes,
                      content_type: str = "application/json") -> bool:
        path = self.path_of(key)
        writer = FileWriter(self, key)
        try:
            writer.write(data)
            tmp = writer.finish()
            try:
                os.link(tmp, path)
            except FileExistsError:
                # NFS: a retransmitted LINK whose first reply was lost answers EEXIST although
                # it succeeded. The object is ours when it is our inode.
                try:
                    return os.stat(tmp).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    return False
            except OSError as exc:
                raise self._error(exc, "write", key) from None
            _fsync_dir(path.parent)
            return True
        finally:
            writer.abort()

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        out = []
        for key, path, st in self._walk(prefix, partial=True):
            out.append(IncompleteUpload(key, path.name, _mtime(st)))
        return sorted(out, key=lambda u: (u.key, u.upload_id))

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        if not _PARTIAL_RE.match(upload.upload_id):
            raise StorageError(f"{self.description}: {upload.upload_id!r} is not an upload")
        path = self.path_of(upload.key).parent / upload.upload_id
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "abort upload", upload.key) from None

    # -- what doctor asks --------------------------------------------------------------------
    def check_access(self) -> None:
        self._require_root("open")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"open {self.description}: directory {self.root} is not "
                               "writable by this user")

    def facts(self) -> list[tuple[str, str]]:
        fstype = _filesystem_of(self.root)
        note = " (copies on other hosts or clouds cover a lost share: see `copy`)"
        return [("repository filesystem", (fstype or "unknown") + note)]

    def credentials_source(self) -> str:
        return f"file permissions of {self.root} (uid {os.getuid()})"


def _filesystem_of(path: Path) -> str | None:
    """The filesystem type holding ``path`` (e.g. ext4, nfs4), from /proc/self/mounts."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path.resolve())
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


class FileWriter(Writer):
    """Streams into a temporary file beside the target; ``close`` fsyncs and renames it."""

    def __init__(self, store: FileStorage, key: str) -> None:
        store._require_root("write")
        self._store, self._key = store, key
        self._path = store.path_of(key)
        self._tmp = self._path.parent / _partial_name(self._path.name, uuid.uuid4().hex)
        self._fd: int | None = None
        self._done = False
        for attempt in (1, 2):  # a concurrent delete may remove the empty folder between
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise StorageError(f"write {store.description}/{key}: folder vanished "
                                       "while opening") from None
            except OSError as exc:
                raise store._error(exc, "write", key) from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done or self._fd is None:
            raise StorageError(f"write after close/abort of {self._key}")
        view = memoryview(data).cast("B")
        n = len(view)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise self._store._error(exc, "write", self._key) from None
        self.bytes_written += n
        return n

    def finish(self) -> Path:
        """fsync and close the temporary file; return its path (for put_if_absent)."""
        if self._done or self._fd is None:
            raise StorageError(f"{self._key} already closed")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._store._error(exc, "write", self._key) from None
        finally:
            os.close(fd)
        return self._tmp

    def close(self) -> ObjectInfo:
        try:
            tmp = self.finish()
            os.replace(tmp, self._path)
        except OSError as exc:
            self.abort()
            raise self._store._error(exc, "write", self._key) from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        _fsync_dir(self._path.parent)
        info = self._store.stat(self._key)
        if info is None or info.size != self.bytes_written:
            raise StorageError(f"write {self._key}: file holds "
                               f"{info.size if info else 'nothing'} bytes, wrote "
                               f"{self.bytes_written}")
        return info

    def abort(self) -> None:
        self._done = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def build(url: Any, settings: Any, retry_deadline_s: float) -> FileStorage:
    """The FileStorage of repository ``url`` (storage.registry)."""
    return FileStorage(url.path)
