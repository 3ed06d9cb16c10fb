"""One contract, every backend: memory, local files, and the real services on loopback:
S3 (SeaweedFS), Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server)."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import azure_storage, clean, gcs_storage
from urllib3.exceptions import ProtocolError

from prefect_dr.errors import NotFoundError, StorageError
from prefect_dr.storage import registry
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


#: memory, and every backend of storage.registry by its scheme (test_every_backend_is_here)
BACKENDS = ("memory", "file", "s3", "azure", "gs")
REMOTE = ("s3", "azure", "gs")  # reached over HTTP: answers can be lost, signals arrive


def _open(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if name == "memory":
        return MemoryStorage()
    if name == "file":
        return FileStorage(tmp_path)
    stack_env = request.getfixturevalue("stack_env")
    return {"s3": _s3, "azure": azure_storage, "gs": gcs_storage}[name](stack_env)


def _stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, str]]:
    prefix = f"contract-{uuid.uuid4().hex[:8]}/"
    backend = _open(request.param, request, tmp_path)
    yield backend, prefix
    clean(backend, prefix)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, str]]:
    yield from _stored(request, tmp_path)


@pytest.fixture(params=REMOTE)
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, str]]:
    """The backends behind a network: the contract's tests of lost answers and stop signals
    (memory and files have no request whose answer can be lost)."""
    yield from _stored(request, tmp_path)


def test_every_backend_is_here() -> None:
    """A backend registered in prefect_dr (storage.registry) runs this suite: add it to
    BACKENDS and ``_open`` (tests/test_backend_registry.py runs it on a toy backend)."""
    assert set(registry.schemes()) <= set(BACKENDS)


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
    """Random data over several parts (three on S3, Azure and GCS: two full, one short), in
    writes of random sizes; the whole object read back is the same, part order and tail too."""
    s, p = store
    rng = random.Random(24)
    data = rng.randbytes(MIN_PART * 2 + 123)
    writer = s.open_writer(p + "big")
    offset = 0
    while offset < len(data):
        step = min(rng.randint(1, 3 << 20), len(data) - offset)
        assert writer.write(memoryview(data)[offset:offset + step]) == step
        offset += step
    assert s.stat(p + "big") is None
    info = writer.close()
    assert info.size == len(data) == writer.bytes_written
    with s.open_reader(p + "big") as reader:
        got = reader.read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert s.list_incomplete_uploads(p) == []


def test_abort_after_close_keeps_the_object(store: tuple[Storage, str]) -> None:
    s, p = store
    data = os.urandom(MIN_PART + 5)
    writer = s.open_writer(p + "kept")
    writer.write(data)
    writer.close()
    writer.abort()  # already done: nothing to abort, nothing deleted
    assert s.get_bytes(p + "kept") == data
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


class _Network:
    """The HTTP layer under every remote backend (botocore, requests under Azure's and GCS's
    clients all send through urllib3): the next write request (PUT or POST) is carried out
    and its answer lost, dropped before it is sent, or interrupted by a stop signal."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import urllib3.connectionpool

        self.fault: str | None = None
        self.writes = 0
        real = urllib3.connectionpool.HTTPConnectionPool.urlopen

        def urlopen(pool: object, method: str, url: str, *args: object,
                    **kwargs: object) -> object:
            if method in ("PUT", "POST"):
                self.writes += 1
                fault, self.fault = self.fault, None
                if fault == "signal":
                    from prefect_dr import interrupt

                    raise interrupt.note("SIGTERM")
                if fault in ("lost", "signal-after"):
                    real(pool, method, url, *args, **kwargs)
                if fault in ("lost", "dropped"):
                    raise ProtocolError("Connection aborted.", ConnectionResetError(104))
                if fault == "signal-after":
                    from prefect_dr import interrupt

                    raise interrupt.note("SIGTERM")
            return real(pool, method, url, *args, **kwargs)

        monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", urlopen)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> _Network:
    from prefect_dr import interrupt

    monkeypatch.setattr(interrupt, "_noted", None)
    return _Network(monkeypatch)


def test_put_if_absent_retried_after_a_lost_answer(remote: tuple[Storage, str],
                                                   network: _Network) -> None:
    s, p = remote
    network.fault = "lost"  # our write landed, its answer was lost: the retry finds it ours
    network.writes = 0
    assert s.put_if_absent(p + "lock", b"mine") is True and network.writes == 2
    network.fault = "dropped"  # dropped before it was sent: the retry finds another's object
    network.writes = 0
    assert s.put_if_absent(p + "lock", b"other") is False and network.writes == 2
    assert s.get_bytes(p + "lock") == b"mine"


def test_signal_inside_a_request_is_interrupted_not_a_storage_error(
        remote: tuple[Storage, str], network: _Network) -> None:
    """Client libraries may wrap any exception raised inside an HTTP request (botocore does:
    HTTPClientError), our SIGTERM handler's too; the run must still end as Interrupted,
    without retries."""
    from prefect_dr import interrupt
    from prefect_dr.errors import Interrupted

    s, p = remote
    for action in (lambda: s.put_bytes(p + "k", b"x"), lambda: s.put_if_absent(p + "k", b"x")):
        interrupt._noted = None
        network.fault, network.writes = "signal", 0
        with pytest.raises(Interrupted, match=r"^stopped by signal SIGTERM$"):
            action()
        assert network.writes == 1  # no retry after the signal
    interrupt._noted = None
    assert s.stat(p + "k") is None


def test_stopped_while_starting_an_upload_leaves_no_open_upload(
        remote: tuple[Storage, str], network: _Network) -> None:
    """The request that starts a large upload (S3's multipart start, Azure's first block,
    GCS's resumable session) reaches the store, and the signal arrives before its answer."""
    from prefect_dr.errors import Interrupted

    s, p = remote
    network.fault = "signal-after"
    with pytest.raises(Interrupted), s.open_writer(p + "dump") as writer:
        writer.write(b"\0" * (MIN_PART + 1))  # a full part: the upload starts
        writer.close()
    assert [u.key for u in s.list_incomplete_uploads(p)] == []
    assert s.stat(p + "dump") is None


@pytest.mark.parametrize("lost", ["a middle part", "the last part"])
def test_a_part_whose_answer_is_lost_is_not_lost(remote: tuple[Storage, str], network: _Network,
                                                 lost: str) -> None:
    """A part (S3), block (Azure) or chunk of the resumable session (GCS: resent from the
    offset the session reports; the last one finishes the object) lands but its answer is
    lost: the upload goes on and the whole object reads back the same."""
    s, p = remote
    if lost == "a middle part" and s.description.startswith("gs://"):
        pytest.skip("fake-gcs-server finishes a resumable session on the status query "
                    "(PUT 'bytes */*') that real GCS answers with 308 and the bytes it holds")
    data = random.Random(7).randbytes(MIN_PART * 3 + 77)
    writer = s.open_writer(p + "obj")
    writer.write(data[:MIN_PART + 1])  # the upload started, its first part sent or sending
    if lost == "a middle part":
        network.fault = "lost"
    writer.write(data[MIN_PART + 1:])
    if lost == "the last part":
        network.fault = "lost"
    writer.close()
    assert network.fault is None  # the fault was met
    assert s.get_bytes(p + "obj") == data
    assert s.list_incomplete_uploads(p) == []


def test_writers_one_after_another_share_one_set_of_part_buffers(
        remote: tuple[Storage, str]) -> None:
    """Issue 25: a backup writes its artifacts one after another; each S3 writer used to keep
    its (max_in_flight + 1) 8 MiB part buffers until the cycle collector ran, so the peak grew
    with every history table. Now a closed writer is freed at once and the next one reuses its
    buffers: max_in_flight + 1 of them (S3 and Azure upload from a pool while the caller
    writes; GCS, whose max_in_flight is 0, sends each chunk in order from its one buffer)."""
    import gc
    import weakref

    s, prefix = remote
    part = os.urandom(MIN_PART)
    seen: list[set[int]] = []
    keep = s.spare.keep  # type: ignore[attr-defined]

    def recorded(buffers: list[bytearray], size: int) -> None:
        seen.append({id(b) for b in buffers})
        keep(buffers, size)

    s.spare.keep = recorded  # type: ignore[attr-defined]
    in_flight = s.max_in_flight  # type: ignore[attr-defined]
    gc.disable()  # only reference counting may free a writer here
    try:
        for n in range(2):
            writer = s.open_writer(f"{prefix}obj-{n}")
            gone = weakref.ref(writer)
            for _ in range(in_flight + 2):  # every buffer used at least once
                writer.write(part)
            writer.close()
            del writer
            assert gone() is None, "a closed writer is kept alive by a reference cycle"
        assert seen[0] == seen[1] and len(seen[0]) == in_flight + 1
        assert s.get_bytes(f"{prefix}obj-1") == part * (in_flight + 2)
    finally:
        gc.enable()
