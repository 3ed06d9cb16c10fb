"""One contract, every backend: memory, local files, and the real services on loopback:
S3 (SeaweedFS), Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import azure_storage, clean, gcs_storage

from prefect_dr.errors import NotFoundError, StorageError
from prefect_dr.storage.base import Storage
from prefect_dr.storage.file import FileStorage
from prefect_dr.storage.memory import MemoryStorage
from prefect_dr.storage.s3 import MIN_PART, S3Storage, part_size_for


def _s3(stack_env: dict[str, str]) -> S3Storage:
    os.environ["AWS_ACCESS_KEY_ID"] = stack_env["AWS_ACCESS_KEY_ID"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = stack_env["AWS_SECRET_ACCESS_KEY"]
    return S3Storage(stack_env["PREFECT_DR_S3_BUCKET"],
                     endpoint_url=stack_env["PREFECT_DR_S3_ENDPOINT_URL"],
                     region=stack_env["PREFECT_DR_S3_REGION"])


@pytest.fixture(params=["memory", "s3", "file", "azure", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, str]]:
    prefix = f"contract-{uuid.uuid4().hex[:8]}/"
    if request.param == "memory":
        yield MemoryStorage(), prefix
        return
    if request.param == "file":
        yield FileStorage(tmp_path), prefix
        return
    if request.param in ("azure", "gcs"):
        stack_env = request.getfixturevalue("stack_env")
        store = (azure_storage(stack_env) if request.param == "azure"
                 else gcs_storage(stack_env))
        yield store, prefix
        clean(store, prefix)
        return
    s3 = _s3(request.getfixturevalue("stack_env"))
    yield s3, prefix
    for info in list(s3.list(prefix)):
        s3.delete(info.key)
    for up in s3.list_incomplete_uploads(prefix):
        s3.abort_incomplete_upload(up)


def test_put_get_stat_delete(store: tuple[Storage, str]) -> None:
    s, p = store
    info = s.put_bytes(p + "a", b"hello")
    assert info.size == 5
    assert s.get_bytes(p + "a") == b"hello"
    assert s.stat(p + "a").size == 5
    s.delete(p + "a")
    assert s.stat(p + "a") is None
    s.delete(p + "a")  # deleting a missing key is fine


def test_missing_object(store: tuple[Storage, str]) -> None:
    s, p = store
    assert s.stat(p + "nope") is None
    with pytest.raises(NotFoundError):
        s.open_reader(p + "nope")


def test_list_is_ordered_and_prefix_scoped(store: tuple[Storage, str]) -> None:
    s, p = store
    for name in ("b", "a", "c/d"):
        s.put_bytes(p + name, name.encode())
    s.put_bytes(p.rstrip("/") + "-other/x", b"x")
    try:
        assert [i.key for i in s.list(p)] == [p + "a", p + "b", p + "c/d"]
    finally:
        s.delete(p.rstrip("/") + "-other/x")


def test_streaming_write_invisible_until_close(store: tuple[Storage, str]) -> None:
    s, p = store
    chunk = os.urandom(1 << 20)
    writer = s.open_writer(p + "big")
    total = 0
    while total < MIN_PART * 2 + 123:  # three parts on S3: two full, one short
        total += writer.write(chunk[: min(len(chunk), MIN_PART * 2 + 123 - total)])
    assert s.stat(p + "big") is None
    info = writer.close()
    assert info.size == total == writer.bytes_written
    with s.open_reader(p + "big") as reader:
        got = reader.read(len(chunk))
    assert got == chunk
    assert s.list_incomplete_uploads(p) == []


def test_abort_leaves_nothing(store: tuple[Storage, str]) -> None:
    s, p = store
    with pytest.raises(RuntimeError), s.open_writer(p + "aborted") as writer:
        writer.write(os.urandom(MIN_PART + 10))
        raise RuntimeError("stage failed")
    assert s.stat(p + "aborted") is None
    assert s.list_incomplete_uploads(p) == []


def test_put_if_absent(store: tuple[Storage, str]) -> None:
    s, p = store
    assert s.put_if_absent(p + "lock", b"one") is True
    assert s.put_if_absent(p + "lock", b"two") is False
    assert s.get_bytes(p + "lock") == b"one"


def test_incomplete_uploads_are_listed_and_aborted(store: tuple[Storage, str]) -> None:
    s, p = store
    writer = s.open_writer(p + "left")
    writer.write(os.urandom(MIN_PART + 1))  # starts a multipart upload on S3
    ups = s.list_incomplete_uploads(p)
    assert [u.key for u in ups] == [p + "left"]
    for up in ups:
        s.abort_incomplete_upload(up)
    assert s.list_incomplete_uploads(p) == []
    s.abort_incomplete_upload(ups[0])  # already gone: fine (an earlier attempt's answer lost)


def test_part_sizes_grow_to_fit_ten_thousand_parts() -> None:
    sizes = [part_size_for(n) for n in range(1, 10_001)]
    assert sizes[0] == MIN_PART and sizes == sorted(sizes)
    assert sum(sizes) > 2 * 1024**4  # > 2 TiB in 10,000 parts
    assert max(sizes) <= 512 * 1024 * 1024


def test_wrong_credentials_are_rejected(stack_env: dict[str, str]) -> None:
    s3 = _s3(stack_env)
    import boto3

    bad = boto3.session.Session(aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key="not-the-secret-key")
    s3.client = bad.client("s3", endpoint_url=stack_env["PREFECT_DR_S3_ENDPOINT_URL"],
                           region_name="us-east-1")
    with pytest.raises(StorageError, match="rejected the credentials") as info:
        s3.head_bucket()
    assert "not-the-secret-key" not in info.value.message


class _LostAnswer:
    """A real S3 client whose first put_object is carried out but answered with a dropped
    connection (or, with ``land=False``, dropped before it reaches S3)."""

    def __init__(self, client: object, *, land: bool) -> None:
        self._client, self._land, self.puts = client, land, 0

    def put_object(self, **kwargs: object) -> object:
        import botocore.exceptions as bce

        self.puts += 1
        if self.puts == 1:
            if self._land:
                self._client.put_object(**kwargs)
            raise bce.EndpointConnectionError(endpoint_url="http://s3")
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def test_put_if_absent_retried_after_a_lost_answer(stack_env: dict[str, str]) -> None:
    s3 = _s3(stack_env)
    p = f"contract-{uuid.uuid4().hex[:8]}/"
    real = s3.client
    try:
        s3.client = flaky = _LostAnswer(real, land=True)  # our write landed, its answer lost
        assert s3.put_if_absent(p + "lock", b"mine") is True and flaky.puts == 2
        s3.client = flaky = _LostAnswer(real, land=False)  # someone else's object is there
        assert s3.put_if_absent(p + "lock", b"other") is False and flaky.puts == 2
        assert s3.get_bytes(p + "lock") == b"mine"
    finally:
        s3.client = real
        s3.delete(p + "lock")


def test_signal_inside_a_request_is_interrupted_not_a_storage_error(
        stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore wraps any exception raised inside an HTTP request (our SIGTERM handler's
    too) as HTTPClientError; the run must still end as Interrupted, without retries."""
    import urllib3.connectionpool

    from prefect_dr import interrupt
    from prefect_dr.errors import Interrupted

    s3 = _s3(stack_env)
    s3.stat("warm-up")  # the connection pool exists before the signal arrives
    monkeypatch.setattr(interrupt, "_noted", None)
    sent = []

    def signal_arrives(*args: object, **kwargs: object) -> object:
        sent.append(1)
        raise interrupt.note("SIGTERM")

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", signal_arrives)
    for action in (lambda: s3.stat("k"), lambda: s3.put_bytes("k", b"x"),
                   lambda: s3.put_if_absent("k", b"x")):
        sent.clear()
        with pytest.raises(Interrupted, match=r"^stopped by signal SIGTERM$"):
            action()
        assert sent == [1]  # no retry after the signal


class _StartAnsweredTooLate:
    """A real S3 client whose create_multipart_upload reaches S3 but whose answer never
    reaches the caller, as when SIGTERM arrives while the answer is on its way."""

    def __init__(self, client: object) -> None:
        self._client = client

    def create_multipart_upload(self, **kwargs: object) -> object:
        from prefect_dr import interrupt

        self._client.create_multipart_upload(**kwargs)
        raise interrupt.note("SIGTERM")

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def test_stopped_while_starting_an_upload_leaves_no_open_upload(
        stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_dr import interrupt
    from prefect_dr.errors import Interrupted

    s3 = _s3(stack_env)
    monkeypatch.setattr(interrupt, "_noted", None)
    key = f"contract-{uuid.uuid4().hex[:8]}/dump"
    s3.client = _StartAnsweredTooLate(s3.client)
    with pytest.raises(Interrupted), s3.open_writer(key) as writer:
        writer.write(b"\0" * (MIN_PART + 1))  # a full part: the upload starts
    assert [u.key for u in s3.list_incomplete_uploads(key)] == []
    assert s3.stat(key) is None



def test_s3_writers_one_after_another_share_one_set_of_part_buffers(
        stack_env: dict[str, str]) -> None:
    """Issue 25: a backup writes its artifacts one after another; each S3 writer used to keep
    its (max_in_flight + 1) 8 MiB part buffers until the cycle collector ran, so the peak grew
    with every history table. Now a closed writer is freed at once and the next one reuses its
    buffers."""
    import gc
    import weakref

    s3 = _s3(stack_env)
    prefix = f"contract-{uuid.uuid4().hex[:8]}/"
    part = os.urandom(MIN_PART)
    seen: list[set[int]] = []
    keep = s3.keep_buffers

    def recorded(buffers: list[bytearray]) -> None:
        seen.append({id(b) for b in buffers})
        keep(buffers)

    s3.keep_buffers = recorded  # type: ignore[method-assign]
    gc.disable()  # only reference counting may free a writer here
    try:
        for n in range(2):
            writer = s3.open_writer(f"{prefix}obj-{n}")
            gone = weakref.ref(writer)
            for _ in range(s3.max_in_flight + 2):  # every buffer used at least once
                writer.write(part)
            writer.close()
            del writer
            assert gone() is None, "a closed S3 writer is kept alive by a reference cycle"
        assert seen[0] == seen[1] and len(seen[0]) == s3.max_in_flight + 1
        assert s3.get_bytes(f"{prefix}obj-1") == part * (s3.max_in_flight + 2)
    finally:
        gc.enable()
        for info in list(s3.list(prefix)):
            s3.delete(info.key)
