"""Client selection (prefect_dr.pg.tools) on fake client programs, and the script filter that
lets a 17+ pg_restore load into PostgreSQL 14-16."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from prefect_dr.errors import SETUP, DatabaseError, SetupError
from prefect_dr.pg import restore as pgr
from prefect_dr.pg import tools


def _fake(folder: Path, program: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / program
    path.write_text(f"#!/bin/sh\necho '{program} (PostgreSQL) {version}'\n")
    path.chmod(0o755)
    return path


@pytest.fixture()
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real client anywhere: an empty PATH and a system glob under tmp_path."""
    monkeypatch.setattr(tools, "SYSTEM_GLOB", str(tmp_path / "usr" / "*" / "bin"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    return tmp_path


def _install(root: Path, major: int, *programs: str, where: str = "usr") -> str:
    folder = root / where / str(major) / "bin"
    for program in programs or ("pg_dump", "pg_restore", "psql"):
        _fake(folder, program, f"{major}.3 (test)")
    return str(folder)


def test_search_order_list_then_system_newest_first_then_path(machine: Path) -> None:
    a = _install(machine, 16, where="opt")
    b = _install(machine, 17, where="other")
    sys14, sys18 = _install(machine, 14), _install(machine, 18)
    assert tools.search_dirs(f"{a}:{b}:")[:4] == [a, b, sys18, sys14]
    assert [c.major for c in tools.found("pg_dump", f"{a}:{b}")] == [16, 17, 18, 14]


def test_pg_dump_is_the_servers_major_else_the_oldest_newer(machine: Path) -> None:
    for major in (14, 15, 18):
        _install(machine, major)
    assert tools.pick_dump(None, 15).major == 15
    assert tools.pick_dump(None, 16).major == 18
    with pytest.raises(SetupError) as caught:
        tools.pick_dump(None, 19, "19.1")
    assert caught.value.exit_code == SETUP
    assert "postgresql-client-19" in caught.value.message
    assert "pg_dump 18.3" in caught.value.message


@pytest.mark.parametrize(("archive", "server", "expected", "filtered"), [
    (15, 15, 15, False),   # the server's own
    (14, 15, 15, False),
    (14, 14, 15, False),   # no 14 client: the oldest that reads, not 18 (it sends the SET)
    (15, 18, 18, False),   # 18 into 18: no rejected SET
    (18, 15, 18, True),    # only 18 reads an 18 archive: filtered through psql 18
    (18, 14, 18, True),
])
def test_pg_restore_choice(machine: Path, archive: int, server: int, expected: int,
                           filtered: bool) -> None:
    for major in (15, 18):
        _install(machine, major)
    choice = tools.pick_restore(None, archive_major=archive, server_major=server)
    assert (choice.pg_restore.major, choice.filtered) == (expected, filtered)
    if filtered:
        assert choice.psql is not None and choice.psql.folder == choice.pg_restore.folder
        assert "without its SET transaction_timeout" in choice.describe()


def test_pg_restore_refusals_name_what_to_install(machine: Path) -> None:
    _install(machine, 15)
    with pytest.raises(SetupError, match="postgresql-client-18"):
        tools.pick_restore(None, archive_major=18, server_major=15)
    # an 18 client without psql beside it cannot be filtered into a 15 server
    _install(machine, 18, "pg_restore", where="bare")
    with pytest.raises(SetupError, match="no psql of the same version"):
        tools.pick_restore(str(machine / "bare" / "18" / "bin"), archive_major=18,
                           server_major=15)
    # into an 18 server it needs no filter
    choice = tools.pick_restore(str(machine / "bare" / "18" / "bin"), archive_major=18,
                                server_major=18)
    assert choice.pg_restore.major == 18 and not choice.filtered


def test_missing_client_is_a_setup_error(machine: Path) -> None:
    with pytest.raises(SetupError, match="pg_restore not found"):
        tools.find("pg_restore")
    with pytest.raises(SetupError, match="no pg_dump can dump"):
        tools.pick_dump(None, 15)


def test_a_broken_copy_is_skipped(machine: Path) -> None:
    folder = machine / "broken"
    folder.mkdir()
    (folder / "pg_dump").write_text("#!/bin/sh\nexit 127\n")
    (folder / "pg_dump").chmod(0o755)
    _install(machine, 15)
    assert tools.pick_dump(str(folder), 15).major == 15


def test_downgrade_is_a_warning_not_a_refusal() -> None:
    assert tools.downgrade_note("15.4", 15, "15.4") is None
    assert tools.downgrade_note("14.9", 18, "18.6") is None
    note = tools.downgrade_note("18.6", 14, "14.23")
    assert note and "older major" in note


def test_filter_drops_the_set_outside_copy_data_only() -> None:
    script = (b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\n"
              b"CREATE TABLE t (x text);\nCOPY public.t (x) FROM stdin;\n"
              b"SET transaction_timeout = 0;\n\\.\n\nSET transaction_timeout = 0;\n")
    out = io.BytesIO()
    assert pgr.filter_script(io.BytesIO(script), out) == 2
    assert out.getvalue() == (b"SET statement_timeout = 0;\nCREATE TABLE t (x text);\n"
                              b"COPY public.t (x) FROM stdin;\nSET transaction_timeout = 0;\n"
                              b"\\.\n\n")


def test_client_version_failures_are_setup_errors() -> None:
    with pytest.raises(SetupError):
        pgr.raise_setup(DatabaseError("pg_restore failed (exit 1): pg_restore: error: "
                                      "unsupported version (1.16) in file header"))
    pgr.raise_setup(DatabaseError("pg_restore failed (exit 1): relation exists"))  # no raise


def test_pathlist_setting(tmp_path: Path) -> None:
    from prefect_dr.config import load

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    settings = load(env={"PREFECT_DR_PG_BIN_DIR": f"{a}:{b}"})
    assert settings.pg_bin_dir == f"{a}:{b}"
    with pytest.raises(Exception, match="does not exist"):
        load(env={"PREFECT_DR_PG_BIN_DIR": f"{a}:{tmp_path / 'gone'}"})


def test_a_client_program_sees_only_what_libpq_needs() -> None:
    """I4: cloud credentials, the block key and notification URLs never reach pg_dump."""
    from prefect_dr.pg import dump

    base = {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C.UTF-8", "PGSSLMODE": "require",
            "AWS_SECRET_ACCESS_KEY": "s3cret", "AZURE_STORAGE_CONNECTION_STRING": "x",
            "PREFECT_SERVER_ENCRYPTION_KEY": "k", "PREFECT_DR_NOTIFY": "slack://t"}
    clean, env = dump.child_env("postgresql://u:pw@h/db", base)
    assert clean == "postgresql://u@h/db"
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
                   "PGSSLMODE": "require", "PGPASSWORD": "pw", "PGCONNECT_TIMEOUT": "10"}


def test_install_hints_are_true_on_debian() -> None:
    """Issue 23: 'Debian: postgresql-client-18' named a package Debian 12 does not have."""
    assert "PostgreSQL apt repository" in tools._install_hint(18)
    assert "Debian bookworm (12): apt-get install postgresql-client-15" in tools._install_hint(15)
