"""Ed25519 signatures (cryptography) of manifests, verification records and status records.

On by default since issue 27: writers sign with PREFECT_DR_SIGNING_KEY_FILE, readers check
against the public keys in PREFECT_DR_VERIFY_KEY (several, comma-separated, for rotation).
What a reader accepts is decided in ``trust``; this module only signs and checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from prefect_dr import interrupt
from prefect_dr.errors import CryptoKeyError
from prefect_dr.manifest import Manifest, ManifestError, b64, unb64

ALG = "ed25519"


def generate() -> tuple[str, str]:
    """Return (private key PEM text, public key as base64) of a new Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, public_text(key.public_key())


def public_text(key: Ed25519PublicKey) -> str:
    """The base64 raw form of a public key (what PREFECT_DR_VERIFY_KEY holds)."""
    return b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id(public: str) -> str:
    """A short id of a public key, recorded beside a signature."""
    return hashlib.sha256(public.encode()).hexdigest()[:16]


def load_private(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key. Raises CryptoKeyError (never showing the contents)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CryptoKeyError(f"cannot read signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise CryptoKeyError(f"signing key {path} is not a PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CryptoKeyError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key. Raises CryptoKeyError."""
    try:
        return Ed25519PublicKey.from_public_bytes(unb64(text.strip(), "PREFECT_DR_VERIFY_KEY"))
    except Exception:
        raise CryptoKeyError("PREFECT_DR_VERIFY_KEY is not a base64 Ed25519 public key") from None


class Keyring:
    """The public keys a reader trusts, by key id (several during a key rotation)."""

    def __init__(self, keys: list[Ed25519PublicKey] | tuple[Ed25519PublicKey, ...] = ()) -> None:
        self.keys = {key_id(public_text(k)): k for k in keys}

    @classmethod
    def parse(cls, text: str | None) -> Keyring:
        """The keys of a comma- or space-separated list of base64 public keys (empty: none).
        Raises CryptoKeyError for a malformed one."""
        parts = [p for p in (text or "").replace(",", " ").split() if p]
        return cls([load_public(p) for p in parts])

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, signature: dict[str, object] | None) -> Ed25519PublicKey | None:
        """The trusted key a signature names, None when it names no trusted key."""
        if not isinstance(signature, dict):
            return None
        return self.keys.get(str(signature.get("key_id", "")))


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    """Return ``manifest`` with a signature over its canonical bytes."""
    unsigned = replace(manifest, signature=None)
    public = public_text(key.public_key())
    value = b64(key.sign(unsigned.signing_bytes()))
    return replace(manifest, signature={"alg": ALG, "key_id": key_id(public), "value": value})


def check(manifest: Manifest, public: Ed25519PublicKey | Keyring) -> None:
    """Raise ManifestError unless ``manifest`` carries a valid signature by ``public`` (one
    key, or the key of a keyring its signature names)."""
    sig = manifest.signature
    if not sig:
        raise ManifestError(f"manifest of {manifest.backup_id} is not signed, "
                            "but PREFECT_DR_VERIFY_KEY requires a signature")
    if isinstance(public, Keyring):
        found = public.find(sig)
        if found is None:
            raise ManifestError(f"manifest of {manifest.backup_id} is signed by key "
                                f"{sig.get('key_id')}, which is not in PREFECT_DR_VERIFY_KEY")
        public = found
    if sig.get("alg") != ALG:
        raise ManifestError(f"manifest of {manifest.backup_id}: unknown signature algorithm")
    try:
        public.verify(unb64(str(sig.get("value", "")), "signature"),
                      replace(manifest, signature=None).signing_bytes())
    except (InvalidSignature, Exception):
        raise ManifestError(f"manifest of {manifest.backup_id}: signature does not match "
                            "(edited or signed by another key)") from None


def _canonical(record: dict[str, object]) -> bytes:
    body = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign_record(record: dict[str, object], key: Ed25519PrivateKey) -> dict[str, object]:
    """Return ``record`` (a verification record) with a signature over its canonical JSON."""
    public = public_text(key.public_key())
    return {**record, "signature": {"alg": ALG, "key_id": key_id(public),
                                    "value": b64(key.sign(_canonical(record)))}}


def check_record(record: dict[str, object], public: Ed25519PublicKey | Keyring) -> bool:
    """Whether ``record`` carries a valid signature by ``public`` (one key, or the key of a
    keyring its signature names)."""
    sig = record.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        return False
    if isinstance(public, Keyring):
        found = public.find(sig)
        if found is None:
            return False
        public = found
    try:
        public.verify(unb64(str(sig.get("value", "")), "signature"), _canonical(record))
    except Exception:
        interrupt.raise_if_noted()
        return False
    return True
