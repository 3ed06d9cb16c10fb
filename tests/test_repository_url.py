"""Repository URLs: parsing, refusals, the S3 settings as a repository, and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_dr import config
from prefect_dr.errors import ConfigError
from prefect_dr.storage import factory
from prefect_dr.storage.file import FileStorage
from prefect_dr.storage.url import RepositoryURLError, parse


@pytest.mark.parametrize(("text", "scheme", "container", "prefix", "path"), [
    ("s3://acme-backups/prod", "s3", "acme-backups", "prod", ""),
    ("s3://acme-backups", "s3", "acme-backups", "", ""),
    ("azure://prefect-dr/prod/eu/", "azure", "prefect-dr", "prod/eu", ""),
    ("gs://acme_backups/prod", "gs", "acme_backups", "prod", ""),
    ("file:///srv/backups/", "file", "", "", "/srv/backups"),
])
def test_parse(text: str, scheme: str, container: str, prefix: str, path: str) -> None:
    url = parse(text)
    assert (url.scheme, url.container, url.prefix, url.path) == (scheme, container, prefix, path)
    assert parse(str(url)) == url


@pytest.mark.parametrize(("text", "says"), [
    ("ftp://host/x", "must start with s3://"),
    ("s3://AKIA:secret@bucket/p", "must not carry credentials"),
    ("azure://key@container/p", "must not carry credentials"),
    ("file://relative/path", "three slashes"),
    ("file:///srv/../etc", "without . or .."),
    ("s3://Bad_Bucket/p", "not a valid bucket name"),
    ("azure://ab/p", "not a valid container name"),
    ("s3://bucket/a//b", "must not contain"),
    ("s3://bucket/p?sig=abc", "unknown parameter sig"),
    ("s3://bucket/p?endpoint=ftp://x", "must be an http(s) URL"),
    ("azure://container/p?account_url=https%3A%2F%2Fa.blob.core.windows.net%2F%3Fsig%3Dabc",
     "must not carry credentials"),
    ("s3://bucket/p?endpoint=http%3A%2F%2Fuser%3Apw%40minio%3A9000", "must not carry"),
])
def test_refused(text: str, says: str) -> None:
    with pytest.raises(RepositoryURLError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_parameters_name_the_service() -> None:
    url = parse("s3://bucket/p?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert url.params == {"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1"}


def test_s3_settings_describe_an_s3_repository() -> None:
    settings = config.load(env={"PREFECT_DR_S3_BUCKET": "acme-backups"})
    assert str(settings.repository_url) == "s3://acme-backups/prefect-dr"
    assert settings.layout_prefix == "prefect-dr"
    both = config.load(env={"PREFECT_DR_S3_BUCKET": "acme-backups",
                            "PREFECT_DR_REPOSITORY": "file:///srv/backups"})
    assert both.repository_url.scheme == "file" and both.layout_prefix == ""


def test_no_repository_and_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no repository"):
        factory.from_settings(config.load(env={}))
    with pytest.raises(ConfigError) as err:
        config.load(env={"PREFECT_DR_REPOSITORY": "s3://u:p@bucket/x",
                         "PREFECT_DR_COPY_TO": "nfs://share"})
    assert len(err.value.problems) == 2 and "u:p" not in str(err.value.problems)
    with pytest.raises(ConfigError, match="must start with"):
        factory.open_url("nfs://share", config.load(env={}))


def test_factory_builds_the_backend_of_the_url(tmp_path: Path) -> None:
    store = factory.open_url(f"file://{tmp_path}", config.load(env={}))
    assert isinstance(store, FileStorage) and store.url == f"file://{tmp_path}"
    s3 = factory.open_url("s3://acme-backups/p?endpoint=http://127.0.0.1:1", config.load(env={}))
    assert s3.endpoint_url == "http://127.0.0.1:1" and s3.url.startswith("s3://acme-backups/p")


def test_file_repository_refuses_keys_that_leave_it(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "a/.b.0123456789abcdef0123456789abcdef"
                ".partial"):
        with pytest.raises(Exception, match="not a valid object key"):
            store.put_bytes(key, b"x")
    missing = FileStorage(tmp_path / "unmounted")
    with pytest.raises(Exception, match="does not exist"):
        missing.put_bytes("v1/x", b"x")
    assert not (tmp_path / "unmounted").exists()


def test_doctor_asks_the_backend(tmp_path: Path) -> None:
    from prefect_dr import doctor

    settings = config.load(env={"PREFECT_DR_REPOSITORY": f"file://{tmp_path}"})
    report = doctor.Report()
    doctor.check_storage(report, settings, None, "t0ken")
    checks = {c.name: c for c in report.checks}
    assert checks["repository"].status == "ok"
    assert checks["repository probe"].status == "ok"
    assert "repository filesystem" in checks
    assert list(tmp_path.rglob("*doctor-t0ken*")) == []
    gone = config.load(env={"PREFECT_DR_REPOSITORY": f"file://{tmp_path}/unmounted"})
    report = doctor.Report()
    doctor.check_storage(report, gone, None, "t0ken")
    checks = {c.name: c for c in report.checks}
    assert checks["repository"].status == "fail" and "does not exist" in checks[
        "repository"].detail
    assert checks["repository probe"].status == "skip"
