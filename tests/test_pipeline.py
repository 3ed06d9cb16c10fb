from __future__ import annotations

import hashlib
import io
import os

import pytest

from prefect_dr import crypto, pipeline
from prefect_dr.errors import VerificationError
from prefect_dr.storage.memory import MemoryStorage


def _keys() -> tuple[list[crypto.Identity], list[crypto.Recipient]]:
    text, recipient = crypto.generate_identity()
    identity = crypto.Identity.from_str(text.splitlines()[-1])
    return [identity], [crypto.parse_recipient(recipient)]


@pytest.mark.parametrize("level", [3, None])
def test_round_trip_with_stats(level: int | None) -> None:
    ids, recips = _keys()
    data = os.urandom(1 << 20) + b"log line\n" * 200_000
    store = MemoryStorage()
    progress = pipeline.Progress()
    with store.open_writer("x") as w:
        stats = pipeline.encrypt_to(io.BytesIO(data), w, recips, zstd_level=level,
                                    progress=progress)
        w.close()
    blob = store.get_bytes("x")
    assert stats.plaintext_size == len(data)
    assert stats.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert stats.size == len(blob) and stats.sha256 == hashlib.sha256(blob).hexdigest()
    assert progress.counters["dumped"] == len(data)
    assert progress.counters["uploaded"] == len(blob)
    if level is not None:
        assert len(blob) < len(data)
    out = io.BytesIO()
    got = pipeline.decrypt_from(io.BytesIO(blob), out, ids, compressed=level is not None,
                                expect=stats)
    assert out.getvalue() == data and got == stats


def test_mismatch_is_named() -> None:
    ids, recips = _keys()
    store = MemoryStorage()
    with store.open_writer("x") as w:
        stats = pipeline.encrypt_to(io.BytesIO(b"abc" * 1000), w, recips)
        w.close()
    wrong = pipeline.StreamStats(stats.plaintext_size, "0" * 64, stats.size, stats.sha256)
    with pytest.raises(VerificationError, match="plaintext sha256 mismatch"):
        pipeline.decrypt_from(io.BytesIO(store.get_bytes("x")), io.BytesIO(), ids,
                              compressed=True, expect=wrong)
