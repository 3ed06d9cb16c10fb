"""Azure Blob Storage through azure-storage-blob (``azure://CONTAINER/PREFIX``).

Writes are block blobs: blocks are staged (each with its Content-MD5, checked by the service)
by a small pool while the caller keeps writing, and the block list is committed on ``close``,
which is when the blob appears, carrying the MD5 of the whole object; reads are resumable and
check that MD5. Staged blocks of a blob never committed are this backend's incomplete uploads.

Credentials, first found wins: ``AZURE_STORAGE_CONNECTION_STRING``; an account key
(``AZURE_STORAGE_KEY`` with the account URL or ``AZURE_STORAGE_ACCOUNT``); else azure-identity's
``DefaultAzureCredential`` (workload identity on AKS, managed identity, a service principal in
``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``, the Azure CLI login).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core import exceptions as ae
from azure.storage.blob import BlobServiceClient, ContentSettings

from prefect_dr import redact, retry
from prefect_dr.errors import ConfigError, DRError, NotFoundError, StorageError
from prefect_dr.storage import streams
from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, ObjectRetention, Writer
from prefect_dr.storage.parts import CompletingPartWriter, SparePool
from prefect_dr.storage.remote import PartSizes, RemoteStorage
from prefect_dr.units import MiB

log = logging.getLogger(__name__)

#: 8 MiB, doubling every 5000 blocks up to 256 MiB: 50,000 blocks hold > 7 TiB
BLOCKS = PartSizes(first=8 * MiB, cap=256 * MiB, step=5000, most=50_000)
READ_CHUNK = 4 * MiB
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """Whether an Azure error is worth retrying (network trouble, throttling, 5xx)."""
    if isinstance(exc, ae.ServiceRequestError | ae.ServiceResponseError):
        return True
    return isinstance(exc, ae.HttpResponseError) and exc.status_code in _TRANSIENT_STATUS


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or getattr(exc, "status_code", "") or "")


def _block_id(number: int) -> str:
    return base64.b64encode(f"prefect-dr-{number:08d}".encode()).decode()


class AzureStorage(RemoteStorage):
    """Storage in one container of an Azure storage account."""

    def __init__(self, container: str, *, account_url: str | None = None,
                 connection_string: str | None = None, retry_deadline_s: float = 120.0,
                 max_in_flight: int = 2, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.container = container
        self.retry_deadline_s = retry_deadline_s
        self.max_in_flight = max_in_flight
        self.spare = SparePool(max_in_flight)  # buffers a finished writer left for the next
        timeouts = {"retry_total": 0, "connection_timeout": 5,
                    "read_timeout": max(5.0, min(60.0, retry_deadline_s / 4)),
                    "max_single_get_size": READ_CHUNK, "max_chunk_get_size": READ_CHUNK,
                    "max_single_put_size": BLOCKS.first, "max_block_size": BLOCKS.first}
        connection_string = connection_string or env.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            redact.register(connection_string)
            for part in connection_string.split(";"):
                name, _, value = part.partition("=")
                if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
                    redact.register(value)
            self.service = BlobServiceClient.from_connection_string(connection_string,
                                                                    **timeouts)
            self._source = f"connection string (account {self.service.account_name})"
        else:
            account = env.get("AZURE_STORAGE_ACCOUNT", "")
            if not account_url and account:
                account_url = f"https://{account}.blob.core.windows.net"
            if not account_url:
                raise ConfigError(["azure:// repository: set AZURE_STORAGE_CONNECTION_STRING, "
                                   "AZURE_STORAGE_ACCOUNT or PREFECT_DR_AZURE_ACCOUNT_URL"])
            key = env.get("AZURE_STORAGE_KEY")
            if key:
                redact.register(key)
                from azure.core.credentials import AzureNamedKeyCredential

                name = account or urlsplit(account_url).hostname.split(".")[0]
                credential: Any = AzureNamedKeyCredential(name, key)
                self._source = f"account key (AZURE_STORAGE_KEY) of {name}"
            else:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
                self._source = ("azure-identity (workload identity, managed identity, "
                                "AZURE_CLIENT_* service principal or Azure CLI)")
            self.service = BlobServiceClient(account_url, credential=credential, **timeouts)
        self.client = self.service.get_container_client(container)
        self.description = f"azure://{container} at {self.service.url.rstrip('/')}"

    # -- error mapping -------------------------------------------------------------------
    client_errors = (ae.AzureError,)
    answer_errors = (ae.HttpResponseError,)  # the service's own; the others are the client's
    taken_codes = ("BlobAlreadyExists", "409")
    is_transient = staticmethod(is_transient)
    error_code = staticmethod(_code)

    def describe_error(self, exc: BaseException, doing: str) -> DRError:
        """A one-line StorageError for an Azure error (NotFoundError for a missing
        container)."""
        code = _code(exc)
        if isinstance(exc, ae.ServiceRequestError):
            return StorageError(f"{doing}: cannot reach the Azure Blob endpoint")
        if code == "ContainerNotFound":
            return NotFoundError(f"{doing}: container {self.container} does not exist")
        if isinstance(exc, ae.ClientAuthenticationError) or code in (
                "AuthenticationFailed", "AuthorizationFailure",
                "AuthorizationPermissionMismatch", "403"):
            return StorageError(f"{doing}: Azure rejected the credentials "
                                f"({code or 'no credential'}); check the account key or the "
                                "identity's role (Storage Blob Data Contributor)")
        if code:
            return StorageError(f"{doing}: Azure error {code}")
        return StorageError(f"{doing}: {type(exc).__name__}")

    # -- interface -----------------------------------------------------------------------
    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> Writer:
        return AzureWriter(self, key, content_type)

    def _properties(self, key: str) -> Any:
        return self._call("stat", key, self.client.get_blob_client(key).get_blob_properties,
                          answers=dict.fromkeys(("BlobNotFound", "404"), _MISSING))

    def stat(self, key: str) -> ObjectInfo | None:
        props = self._properties(key)
        if props is _MISSING:
            return None
        return _info(props)

    def open_reader(self, key: str) -> BinaryIO:
        props = self._properties(key)
        if props is _MISSING:
            raise NotFoundError(f"no object {key} in {self.description}")
        md5 = props.content_settings.content_md5
        expected = ("md5", base64.b64encode(bytes(md5)).decode()) if md5 else None
        blob = self.client.get_blob_client(key)

        def open_at(offset: int) -> Iterator[bytes]:
            stream = blob.download_blob(offset=offset, etag=props.etag,
                                        match_condition=MatchConditions.IfNotModified,
                                        max_concurrency=1) if props.size else None
            return stream.chunks() if stream is not None else iter(())

        raw = streams.ResumableReader(key, int(props.size), open_at, transient=is_transient,
                                      wrap=lambda exc: self.wrap_error(exc, "read", key),
                                      expected=expected)
        return streams.buffered(raw)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._call("list", prefix, lambda: self.client.list_blobs(
            name_starts_with=prefix).by_page())
        for page in _pages(self, pages, prefix):
            for props in page:
                yield _info(props)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.get_blob_client(key).delete_blob,
                   answers={"BlobNotFound": None, "404": None})

    def _create(self, key: str, data: bytes, content_type: str) -> object:
        return self.client.get_blob_client(key).upload_blob(
            data, overwrite=False, validate_content=True,
            content_settings=ContentSettings(content_type=content_type))

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        committed = {info.key for info in self.list(prefix)}
        pages = self._call("list uploads", prefix, lambda: self.client.list_blobs(
            name_starts_with=prefix, include=["uncommittedblobs"]).by_page())
        out = []
        for page in _pages(self, pages, prefix):
            for props in page:
                if props.name not in committed:
                    started = props.creation_time or props.last_modified or dt.datetime.now(
                        dt.UTC)
                    out.append(IncompleteUpload(props.name, "uncommitted-blocks", started))
        return out

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        self.discard_blocks(upload.key)

    def discard_blocks(self, key: str, *, deadline_s: float | None = None) -> None:
        """Drop the uncommitted blocks of ``key`` (a blob that was never committed). Azure
        keeps no separate upload to abort: deleting the uncommitted blob does it; where the
        service refuses that, an empty commit followed by a delete does."""
        blob = self.client.get_blob_client(key)
        gone = self._call("abort upload", key, blob.delete_blob, deadline_s=deadline_s,
                          answers={"BlobNotFound": _MISSING, "404": _MISSING})
        if gone is not _MISSING:
            return
        blocks = self._call("abort upload", key, lambda: blob.get_block_list("uncommitted"),
                            deadline_s=deadline_s,
                            answers={"BlobNotFound": ([], []), "404": ([], [])})
        if blocks[1] and self.stat(key) is None:
            self._call("abort upload", key, lambda: blob.commit_block_list([]),
                       deadline_s=deadline_s)
            self._call("abort upload", key, blob.delete_blob, deadline_s=deadline_s,
                       answers={"BlobNotFound": None, "404": None})

    def retention(self, key: str) -> ObjectRetention | None:
        """The blob's immutability policy (version-level WORM) and legal hold, or the
        container's legal hold; None when nothing forbids deleting it."""
        props = self._properties(key)
        if props is _MISSING:
            return None
        policy = getattr(props, "immutability_policy", None)
        until = getattr(policy, "expiry_time", None)
        if isinstance(until, dt.datetime) and until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        held = bool(getattr(props, "has_legal_hold", False)) or self._container_hold()
        if until is None and not held:
            return None
        return ObjectRetention(until=until, mode=getattr(policy, "policy_mode", None),
                               legal_hold=held)

    def _container_hold(self) -> bool:
        if not hasattr(self, "_hold"):
            self._hold = bool(self._container().has_legal_hold)
        return self._hold

    def _container(self) -> Any:
        return self._call("open container", "", self.client.get_container_properties)

    # -- what doctor asks ----------------------------------------------------------------
    def check_access(self) -> None:
        self._container()

    def facts(self) -> list[tuple[str, str]]:
        props = self._container()
        worm = "version-level immutability enabled" if getattr(
            props, "immutable_storage_with_versioning_enabled", False) else "no version-level"
        policy = "a container immutability policy" if props.has_immutability_policy else \
            "no container immutability policy"
        hold = "a legal hold" if props.has_legal_hold else "no legal hold"
        return [("azure immutability", f"{worm}; {policy}; {hold}")]

    def credentials_source(self) -> str:
        return self._source


_MISSING = object()


def _info(props: Any) -> ObjectInfo:
    modified = props.last_modified
    if modified is not None and modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.UTC)
    return ObjectInfo(key=props.name, size=int(props.size or 0), last_modified=modified,
                      etag=str(props.etag or "").strip('"'))


def _pages(store: AzureStorage, pages: Any, prefix: str) -> Iterator[list[Any]]:
    """Each page of a listing, fetched with retries (Azure lists in name order)."""
    while True:
        page = store._call("list", prefix, lambda: list(next(pages, [None]) or [None]))
        if page == [None]:
            return
        yield [p for p in page if p is not None]


class AzureWriter(CompletingPartWriter):
    """Stages blocks from a pool while the caller keeps writing; commits on ``close``
    (storage.parts.CompletingPartWriter: block buffers reused). Each block carries its MD5
    (checked by Azure), and the committed blob the MD5 of the whole object (checked by our
    reader). Small objects are one upload.
    """

    part_word = "block"
    max_parts = BLOCKS.most
    thread_name = "azure-block"
    client_errors = (ae.AzureError,)
    wait_for_first = True  # the upload exists (and is listed) once write returns, as on S3

    def __init__(self, store: AzureStorage, key: str, content_type: str) -> None:
        super().__init__(store, key)
        self._content_type = content_type
        self._blob = store.client.get_blob_client(key)
        self._md5 = hashlib.md5(usedforsecurity=False)

    def _part_size(self, number: int) -> int:
        return BLOCKS.size(number)

    def _seen(self, data: memoryview) -> None:
        self._md5.update(data)

    def _content_settings(self) -> ContentSettings:
        return ContentSettings(content_type=self._content_type,
                               content_md5=bytearray(self._md5.digest()))

    def _upload_part(self, number: int, body: bytearray) -> str:
        block_id = _block_id(number)
        # The buffer itself (no copy), with its MD5 as Content-MD5 (Azure checks it); the
        # SDK's validate_content would want a bytes copy.
        md5 = hashlib.md5(body, usedforsecurity=False).digest()
        retry.call(lambda: self._blob.stage_block(block_id, body, length=len(body),
                                                  transactional_content_md5=md5),
                   transient=is_transient, what=f"stage block {number}",
                   deadline_s=self._store.retry_deadline_s)
        return block_id

    def _put_whole(self, data: bytearray) -> None:
        settings = self._content_settings()
        self._store._call("write", self._key, lambda: self._blob.upload_blob(
            bytes(data), overwrite=True, validate_content=True, content_settings=settings))

    def _complete(self, parts: list[Any]) -> None:
        from azure.storage.blob import BlobBlock

        settings = self._content_settings()
        self._store._call("commit blocks", self._key, lambda: self._blob.commit_block_list(
            [BlobBlock(block_id=i) for i in parts], content_settings=settings))

    def _discard(self) -> None:
        if not self._started:
            return
        try:
            self._store.discard_blocks(self._key, deadline_s=min(5.0,
                                                                 self._store.retry_deadline_s))
        except DRError as exc:  # clean-up of a failing write: prune removes what is left
            log.warning("could not discard the staged blocks of %s: %s", self._key,
                        exc.message)


def build(url: Any, settings: Any, retry_deadline_s: float) -> AzureStorage:
    """The AzureStorage of repository ``url`` (storage.registry): the account URL from the
    URL, else the settings; credentials from the environment (module docstring)."""
    return AzureStorage(url.container,
                        account_url=url.params.get("account_url") or settings.azure_account_url,
                        retry_deadline_s=retry_deadline_s)
