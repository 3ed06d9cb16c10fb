"""Where Prefect keeps runtime state outside its database, read by Prefect's own settings loader
(the Prefect installed beside prefect-dr in the dev extras)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_dr import prefect_runtime
from prefect_dr.errors import UsageError


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {"PREFECT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **settings}


def test_defaults_without_redis_are_known_without_starting_prefect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runtime = prefect_runtime.read(_env(tmp_path, PREFECT_DR_STACK_REDIS_URL="redis://x/0"),
                                   python="/nonexistent/python")  # never started
    assert runtime.in_redis() == [] and "no Prefect setting mentions Redis" in runtime.source
    assert prefect_runtime.notes(runtime, None)[0].startswith("Redis: not used")


def test_settings_are_read_as_the_server_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles.toml").write_text(
        'active = "ha"\n[profiles.ha]\n'
        'PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE = "prefect_redis.lease_storage"\n')
    runtime = prefect_runtime.read(_env(
        tmp_path, PREFECT_SERVER_DOCKET_URL="redis://:hunter2@redis.example:6380/2",
        PREFECT_SERVER_DOCKET_NAME="dr-docket"))
    assert runtime.source == "Prefect's settings"
    assert [f.name for f in runtime.in_redis()] == ["lease storage", "docket"]
    assert runtime.docket_url == "redis://redis.example:6380/2"  # no password kept
    note = prefect_runtime.notes(runtime, None)[0]
    assert "prefect:concurrency:*" in note and "dr-docket:*" in note and "hunter2" not in note
    assert "--flush-redis" in note


def test_flush_url_refuses_a_password_and_other_schemes() -> None:
    with pytest.raises(UsageError, match="PREFECT_DR_REDIS_PASSWORD"):
        prefect_runtime.check_url("redis://:s3cret@host:6379/0")
    with pytest.raises(UsageError, match="redis://"):
        prefect_runtime.check_url("http://host:6379/0")
    prefect_runtime.check_url("rediss://host:6379/1")
    assert prefect_runtime.describe("redis://user@host/3") == "host:6379/3"
