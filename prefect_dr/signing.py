"""Ed25519 manifest signatures (cryptography). Optional: on when a signing key is configured."""

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


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    """Return ``manifest`` with a signature over its canonical bytes."""
    unsigned = replace(manifest, signature=None)
    public = public_text(key.public_key())
    value = b64(key.sign(unsigned.signing_bytes()))
    return replace(manifest, signature={"alg": ALG, "key_id": key_id(public), "value": value})


def check(manifest: Manifest, public: Ed25519PublicKey) -> None:
    """Raise ManifestError unless ``manifest`` carries a valid signature by ``public``."""
    sig = manifest.signature
    if not sig:
        raise ManifestError(f"manifest of {manifest.backup_id} is not signed, "
                            "but PREFECT_DR_VERIFY_KEY requires a signature")
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


def check_record(record: dict[str, object], public: Ed25519PublicKey) -> bool:
    """Whether ``record`` carries a valid signature by ``public``."""
    sig = record.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        return False
    try:
        public.verify(unb64(str(sig.get("value", "")), "signature"), _canonical(record))
    except Exception:
        interrupt.raise_if_noted()
        return False
    return True
