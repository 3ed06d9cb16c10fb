"""What a reader accepts from a repository, and what a writer must sign with (issue 27).

Repository write access is not trusted: a manifest is accepted only when it is signed by a key
in PREFECT_DR_VERIFY_KEY and bound to this backup (its id, checked by the catalog) and to this
repository (its ``repository`` field, checked here). ``--allow-unsigned`` accepts an unsigned
manifest, or one signed by an unknown key, with a warning; a manifest whose signature names a
trusted key but does not match is refused even then (it was edited).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prefect_dr import signing
from prefect_dr.errors import ConfigError, VerificationError
from prefect_dr.manifest import Manifest, ManifestError

if TYPE_CHECKING:
    from prefect_dr.config import Settings
    from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)

FIX = ("set PREFECT_DR_VERIFY_KEY to the public key printed by 'prefect-dr keygen', or pass "
       "--allow-unsigned to accept it unauthenticated")


class UntrustedError(VerificationError):
    """A manifest or record is unsigned, signed by an unknown key, or bound elsewhere."""


def repository_name(url: str, configured: str | None = None) -> str:
    """The name a repository is bound by: ``configured`` (PREFECT_DR_REPOSITORY_NAME), else
    its URL without query (an endpoint or region parameter does not change the repository)."""
    if configured:
        return configured.strip()
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Trust:
    """What one reader trusts: its verify keys and the repository it reads."""

    keys: signing.Keyring
    repository: str
    allow_unsigned: bool = False

    def check_manifest(self, manifest: Manifest) -> str:
        """Return how ``manifest`` is trusted ("signed by key ..." or the warning it was
        accepted with). Raises UntrustedError (exit 13) naming the fix."""
        bid = manifest.backup_id
        sig = manifest.signature
        if self.keys.find(sig) is not None:
            signing.check(manifest, self.keys)  # ManifestError: edited after signing
            if manifest.repository is None:
                return self._unbound(f"manifest of {bid} is signed but bound to no repository "
                                     "(written before prefect-dr bound manifests)")
            if manifest.repository != self.repository:
                raise UntrustedError(
                    f"manifest of {bid} belongs to repository {manifest.repository}, not "
                    f"{self.repository}: moved from another repository (a real copy is made "
                    "by 'prefect-dr copy'; a replica read under another URL needs "
                    "PREFECT_DR_REPOSITORY_NAME)")
            return f"signed by key {sig.get('key_id')} for {manifest.repository}"  # type: ignore[union-attr]
        if sig:
            what = f"manifest of {bid} is signed by unknown key {sig.get('key_id')}"
        else:
            what = f"manifest of {bid} is not signed"
        return self._unbound(what)

    def require_keys(self) -> None:
        """Raise UntrustedError (before any work) when no verify key is configured and
        unsigned manifests are not allowed: every manifest would be refused."""
        if not self.keys and not self.allow_unsigned:
            raise UntrustedError(f"no verify key is configured: {FIX}")

    def vouches_for(self, manifest: Manifest) -> bool:
        """Whether ``manifest`` (already through ``check_manifest``) is trusted on its own
        signature and binding, not only by --allow-unsigned."""
        return (self.keys.find(manifest.signature) is not None
                and manifest.repository == self.repository)

    def _unbound(self, what: str) -> str:
        if not self.allow_unsigned:
            if not self.keys:
                raise UntrustedError(f"{what}, and no verify key is configured: {FIX}")
            raise UntrustedError(f"{what}: {FIX}")
        log.warning("%s; accepted by --allow-unsigned", what)
        return f"{what}; accepted by --allow-unsigned"

    def check_record(self, record: dict[str, object]) -> bool:
        """Whether a verification or status record is trusted: signed by a trusted key, or,
        with --allow-unsigned, any record but one whose signature by a trusted key does not
        match (edited)."""
        if signing.check_record(record, self.keys):
            return True
        signature = record.get("signature")
        names_a_trusted_key = isinstance(signature, dict) and self.keys.find(signature) is not None
        return self.allow_unsigned and not names_a_trusted_key  # an edited record: never


def for_reader(verify_key: str | None, repository_url: str, *,
               repository: str | None = None, allow_unsigned: bool = False) -> Trust:
    """The trust of a reader of ``repository_url``. Raises CryptoKeyError for a malformed
    verify key."""
    return Trust(signing.Keyring.parse(verify_key),
                 repository_name(repository_url, repository), allow_unsigned)


def for_settings(settings: Settings, storage: Storage, *, allow_unsigned: bool = False
                 ) -> Trust:
    """The trust of a reader of ``storage`` with these settings. Raises CryptoKeyError for a
    malformed verify key."""
    return for_reader(settings.verify_key, storage.url or storage.description,
                      repository=settings.repository_name, allow_unsigned=allow_unsigned)


def writer_repository(settings: Settings, storage: Storage) -> str:
    """The repository name a writer binds its manifests to."""
    return repository_name(storage.url or storage.description, settings.repository_name)


def own_writes(settings: Settings, storage: Storage, key: Ed25519PrivateKey | None) -> Trust:
    """The trust of a writer reading what it has just written (``backup --copy-to``): its
    own key, or anything when it writes unsigned."""
    return Trust(signing.Keyring([key.public_key()] if key is not None else []),
                 writer_repository(settings, storage), allow_unsigned=key is None)


def signer(key_file: str | None, required: bool) -> Ed25519PrivateKey | None:
    """The writer's signing key, None when signing is switched off. Raises ConfigError
    (before any work) when it is required and not configured, CryptoKeyError when it is
    unreadable."""
    if key_file:
        return signing.load_private(Path(key_file))
    if required:
        raise ConfigError(["no signing key: set PREFECT_DR_SIGNING_KEY_FILE to the key "
                           "'prefect-dr keygen' wrote (or signing.required = false / "
                           "PREFECT_DR_SIGNING_REQUIRED=false to write unsigned backups)"])
    log.warning("writing unsigned: readers refuse this backup unless --allow-unsigned")
    return None


def bind(manifest: Manifest, repository: str, key: Ed25519PrivateKey | None) -> Manifest:
    """``manifest`` bound to ``repository`` and signed by ``key`` (unsigned without one)."""
    bound = replace(manifest, repository=repository, signature=None)
    return signing.sign(bound, key) if key is not None else bound


def sign_record(record: dict[str, object], key: Ed25519PrivateKey | None) -> dict[str, object]:
    """A status or verification record, signed when there is a key."""
    return signing.sign_record(record, key) if key is not None else record


__all__ = ["ManifestError", "Trust", "UntrustedError", "bind", "for_reader",
           "repository_name", "sign_record", "signer"]
