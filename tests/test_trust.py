"""Unit tests of what a reader trusts (trust.py) and of the archive contents check."""

from __future__ import annotations

from dataclasses import replace

import pytest

from prefect_dr import archive_toc, signing, trust
from prefect_dr.errors import CryptoKeyError, VerificationError
from prefect_dr.manifest import Manifest

REPO = "s3://bucket/prod"


def _manifest(backup_id: str = "20261201T000000Z-aaaaaa") -> Manifest:
    return Manifest(backup_id=backup_id, kind="full", started_at="2026-12-01T00:00:00+00:00",
                    finished_at="2026-12-01T00:01:00+00:00", tool_version="0", prefect_version=None,
                    alembic_revision=None, postgres_version="15", pg_dump_version="15",
                    database="h:5432/prefect", row_counts={}, artifacts=(), block_key={})


def _key() -> tuple[signing.Ed25519PrivateKey, str]:
    from cryptography.hazmat.primitives import serialization

    pem, public = signing.generate()
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, signing.Ed25519PrivateKey)
    return key, public


def test_signed_and_bound_is_trusted_and_keys_rotate() -> None:
    old, old_public = _key()
    new, new_public = _key()
    reader = trust.for_reader(f"{old_public}, {new_public}", REPO + "?endpoint=http://x")
    for key in (old, new):
        detail = reader.check_manifest(trust.bind(_manifest(), REPO, key))
        assert detail.startswith("signed by key") and REPO in detail


def test_untrusted_manifests_are_refused_naming_the_fix(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    key, public = _key()
    other, _ = _key()
    reader = trust.for_reader(public, REPO)
    cases = {
        "is not signed": trust.bind(_manifest(), REPO, None),
        "signed by unknown key": trust.bind(_manifest(), REPO, other),
        "bound to no repository": signing.sign(_manifest(), key),
    }
    for words, manifest in cases.items():
        with pytest.raises(trust.UntrustedError, match=words) as info:
            reader.check_manifest(manifest)
        assert info.value.exit_code == 13 and "--allow-unsigned" in info.value.message
        allowed = replace(reader, allow_unsigned=True)
        assert "accepted by --allow-unsigned" in allowed.check_manifest(manifest)
        assert not allowed.vouches_for(manifest)
    with pytest.raises(trust.UntrustedError, match="moved from another repository"):
        reader.check_manifest(trust.bind(_manifest(), "s3://other/prod", key))
    edited = replace(trust.bind(_manifest(), REPO, key), kind="config-only")
    for r in (reader, replace(reader, allow_unsigned=True)):
        with pytest.raises(VerificationError, match="signature does not match"):
            r.check_manifest(edited)
    with pytest.raises(trust.UntrustedError, match="no verify key is configured"):
        trust.for_reader(None, REPO).check_manifest(trust.bind(_manifest(), REPO, key))


def test_records_are_trusted_only_when_signed_by_a_verify_key() -> None:
    key, public = _key()
    other, _ = _key()
    reader = trust.for_reader(public, REPO)
    record: dict[str, object] = {"backup_id": "x", "result": "passed"}
    assert reader.check_record(signing.sign_record(record, key))
    assert not reader.check_record(record)
    assert not reader.check_record(signing.sign_record(record, other))
    tampered = {**signing.sign_record(record, key), "result": "failed"}
    assert not reader.check_record(tampered)
    lenient = replace(reader, allow_unsigned=True)
    assert lenient.check_record(record) and not lenient.check_record(tampered)


def test_keyring_and_signer_errors() -> None:
    with pytest.raises(CryptoKeyError):
        signing.Keyring.parse("garbage")
    assert not signing.Keyring.parse("  ")
    with pytest.raises(Exception, match="no signing key"):
        trust.signer(None, required=True)
    assert trust.signer(None, required=False) is None
    assert trust.repository_name("s3://b/p/?region=x") == "s3://b/p"
    assert trust.repository_name("s3://b/p", "prod-backups") == "prod-backups"


LISTING = """;
; Archive created at 2026-12-06
;
2; 3079 16828 EXTENSION - pg_trgm
4041; 0 0 COMMENT - EXTENSION pg_trgm
1016; 1247 17399 TYPE public deployment_status prefect
226; 1259 16485 TABLE public flow prefect
3900; 0 16485 TABLE DATA public flow prefect
3700; 2606 17057 FK CONSTRAINT public worker fk_worker__work_pool_id__work_pool prefect
"""


def test_a_prefect_listing_holds_nothing_foreign() -> None:
    verdict = archive_toc.judge(archive_toc.parse(LISTING))
    assert verdict.entries == 6 and verdict.foreign == () and verdict.executable == ()


def test_foreign_and_executable_entries() -> None:
    extra = """250; 1255 17500 FUNCTION public forged_f(x integer) mallory
251; 1259 17501 TABLE public forged_t mallory
252; 2620 17502 TRIGGER public flow t_flow mallory
253; 3079 17503 EXTENSION - plpython3u
254; 2618 17504 RULE public flow r_flow mallory
255; 3466 17505 EVENT TRIGGER - on_ddl mallory
256; 1247 17506 COLLATION public c1 mallory
"""
    verdict = archive_toc.judge(archive_toc.parse(LISTING + extra))
    assert [str(e) for e in verdict.executable] == [
        "FUNCTION public.forged_f(x integer)", "TRIGGER public.flow t_flow",
        "EXTENSION plpython3u", "RULE public.flow r_flow", "EVENT TRIGGER on_ddl"]
    assert "TABLE public.forged_t" in [str(e) for e in verdict.foreign]
    assert "COLLATION public.c1" in [str(e) for e in verdict.foreign]
