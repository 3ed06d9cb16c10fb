from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prefect_dr import crypto
from prefect_dr.errors import CryptoKeyError, DRError


def _identity(tmp_path: Path, name: str = "id.txt") -> tuple[Path, str]:
    text, recipient = crypto.generate_identity()
    path = tmp_path / name
    crypto.write_secret_file(path, text)
    return path, recipient


def test_keygen_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path, recipient = _identity(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert recipient.startswith("age1")
    assert f"# public key: {recipient}" in path.read_text()
    with pytest.raises(DRError, match="refusing to overwrite"):
        crypto.write_secret_file(path, "x")


def test_stream_round_trip_and_wrong_identity(tmp_path: Path) -> None:
    path, recipient = _identity(tmp_path)
    other, _ = _identity(tmp_path, "other.txt")
    data = os.urandom(300_000)
    ct = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), ct, [crypto.parse_recipient(recipient)])
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(ct.getvalue()), out, crypto.load_identities(path))
    assert out.getvalue() == data
    with pytest.raises(CryptoKeyError, match="none of the configured identities"):
        crypto.decrypt_stream(io.BytesIO(ct.getvalue()), io.BytesIO(),
                              crypto.load_identities(other))
    with pytest.raises(DRError, match="damaged or truncated"):
        crypto.decrypt_stream(io.BytesIO(ct.getvalue()[:-100]), io.BytesIO(),
                              crypto.load_identities(path))


def test_malformed_identity_file_names_line_not_content(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(CryptoKeyError) as info:
        crypto.load_identities(bad)
    assert "line 2" in info.value.message and "NOTAKEY" not in info.value.message
    with pytest.raises(CryptoKeyError, match="does not exist"):
        crypto.load_identities(tmp_path / "absent.txt")


def test_matching_recipients(tmp_path: Path) -> None:
    path, recipient = _identity(tmp_path)
    _, other = _identity(tmp_path, "o.txt")
    ids = crypto.load_identities(path)
    assert crypto.matching_recipients(ids, [other, recipient]) == [recipient]
    assert crypto.fingerprint(recipient) != crypto.fingerprint(other)


@pytest.mark.skipif(shutil.which("age") is None, reason="Debian's age binary is not installed")
def test_stock_age_decrypts_what_we_encrypt(tmp_path: Path) -> None:
    path, recipient = _identity(tmp_path)
    data = b"prefect-dr break-glass " * 1000
    ct = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), ct, [crypto.parse_recipient(recipient)])
    proc = subprocess.run(["age", "-d", "-i", str(path)], input=ct.getvalue(),
                          capture_output=True, check=True)
    assert proc.stdout == data


def test_stream_errors_propagate_with_their_type(tmp_path: Path) -> None:
    from prefect_dr.errors import StorageError

    _, recipient = _identity(tmp_path)

    class Failing(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            raise StorageError("upload refused")

    with pytest.raises(StorageError, match="upload refused"):
        crypto.encrypt_stream(io.BytesIO(b"x" * 200_000), Failing(),
                              [crypto.parse_recipient(recipient)])


def test_keygen_output_pasted_whole_as_a_recipient_says_so() -> None:
    recipient = crypto.generate_identity()[1]
    with pytest.raises(CryptoKeyError, match="one line, this value has several"):
        crypto.parse_recipient(recipient + "\nMCowBQYDK2VwAyEA0000")
    assert crypto.parse_recipient(recipient + "\n") is not None
