"""age encryption (via pyrage): identities, recipients, streaming encrypt/decrypt.

Everything here is standard age (https://age-encryption.org/v1), so an artifact this tool writes
decrypts with the stock ``age`` binary and an identity file ``prefect-dr keygen`` writes is one
``age-keygen`` would write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
from pyrage import x25519

from prefect_dr import interrupt, redact
from prefect_dr.errors import CryptoKeyError, DRError, VerificationError

Recipient = x25519.Recipient
Identity = x25519.Identity


def generate_identity() -> tuple[str, str]:
    """Return a new (identity file text, recipient string) pair in age-keygen's format."""
    identity = x25519.Identity.generate()
    secret = str(identity)
    redact.register(secret)
    recipient = str(identity.to_public())
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {recipient}\n{secret}\n"
    return text, recipient


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 holding ``text``; never overwrites.

    Raises DRError when the file exists or cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DRError(f"{path} already exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise DRError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)  # never leave a truncated key file behind
        hint = (": no space left on the device; free space there or choose another folder"
                if exc.errno == errno.ENOSPC else f": {exc.strerror}")
        raise DRError(f"cannot write {path}{hint}") from None


def parse_recipient(text: str) -> Recipient:
    """Parse one age recipient (``age1...``); raises CryptoKeyError naming it when malformed."""
    value = text.strip()
    try:
        return x25519.Recipient.from_str(value)
    except pyrage.RecipientError:
        if "\n" in value:  # `keygen`'s whole output: the recipient, then the verify key
            raise CryptoKeyError("an age recipient is one line, this value has several (keygen "
                                 "prints the recipient on its first line and the verify key "
                                 "on its second)") from None
        shown = value if len(value) <= 24 else value[:20] + "..."
        raise CryptoKeyError(f"not an age recipient: {shown!r} (expected age1...)") from None


def parse_recipient_lines(text: str) -> list[str]:
    """Return the recipient strings of a recipients file (blank lines and # comments skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def load_identities(path: Path) -> list[Identity]:
    """Read an age identity file; raises CryptoKeyError when missing, unreadable or malformed.

    The file's contents never appear in an error.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CryptoKeyError(f"identity file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CryptoKeyError(f"cannot read identity file {path}: {exc}") from None
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        redact.register(line)
        try:
            identities.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise CryptoKeyError(
                f"identity file {path} line {number} is not an age secret key"
            ) from None
    if not identities:
        raise CryptoKeyError(f"identity file {path} holds no age secret key")
    return identities


def recipient_of(identity: Identity) -> str:
    """Return the recipient string (public key) of ``identity``."""
    return str(identity.to_public())


def fingerprint(recipient: str) -> str:
    """Return a short, stable fingerprint of a recipient for manifests (sha256, 16 hex)."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def matching_recipients(identities: Iterable[Identity], recipients: Iterable[str]) -> list[str]:
    """Return those of ``recipients`` that one of ``identities`` can decrypt for."""
    publics = {recipient_of(i) for i in identities}
    return [r for r in recipients if r.strip() in publics]


class _Relay(io.RawIOBase):
    """Passes reads/writes through to a stream and remembers the first exception it raised.

    pyrage turns an exception raised by a Python stream into its own error type with only
    the text kept; the relay lets us re-raise the original (a StorageError, an Interrupted).
    """

    def __init__(self, inner: BinaryIO, mode: str) -> None:
        super().__init__()
        self._inner, self._mode = inner, mode
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return self._mode == "r"

    def writable(self) -> bool:
        return self._mode == "w"

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._inner.read(len(buffer))
            n = len(data)
            buffer[:n] = data
            return n
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def write(self, data: Any) -> int:
        try:
            self._inner.write(data)
            return len(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise


def _reraise_stream_error(*relays: _Relay) -> None:
    for relay in relays:
        if relay.error is not None:
            raise relay.error
    interrupt.raise_if_noted()  # a signal pyrage noticed itself


def encrypt_stream(src: BinaryIO, dst: BinaryIO, recipients: list[Recipient]) -> None:
    """Encrypt everything read from ``src`` to ``dst`` for ``recipients`` (streaming, age v1).

    Raises CryptoKeyError when there is no recipient; an error raised by either stream
    propagates unchanged.
    """
    if not recipients:
        raise CryptoKeyError("no age recipient configured; set PREFECT_DR_AGE_RECIPIENTS")
    reader, writer = _Relay(src, "r"), _Relay(dst, "w")
    try:
        pyrage.encrypt_io(reader, writer, recipients)
    except (pyrage.EncryptError, OSError) as exc:
        _reraise_stream_error(reader, writer)
        raise DRError(f"age encryption failed: {exc}") from None


def decrypt_stream(src: BinaryIO, dst: BinaryIO, identities: list[Identity]) -> None:
    """Decrypt an age stream from ``src`` into ``dst`` (authenticated chunk by chunk).

    Raises CryptoKeyError when no identity matches, VerificationError when the ciphertext is
    damaged or truncated; an error raised by either stream propagates unchanged.
    """
    reader, writer = _Relay(src, "r"), _Relay(dst, "w")
    try:
        pyrage.decrypt_io(reader, writer, identities)
    except (pyrage.DecryptError, OSError) as exc:
        _reraise_stream_error(reader, writer)
        if "No matching keys" in str(exc):
            raise CryptoKeyError(
                "none of the configured identities can decrypt this backup "
                "(check PREFECT_DR_AGE_IDENTITY_FILE)"
            ) from None
        raise VerificationError(
            f"age decryption failed, the data is damaged or truncated: {exc}") from None
