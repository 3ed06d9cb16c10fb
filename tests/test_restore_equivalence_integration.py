"""A restore produces what a plain pg_restore of the same database produces, whatever way it
loads the history (issue 25): the same tables with exactly the same row counts, the same
indexes (``pg_indexes`` definitions) and the same constraints (``pg_get_constraintdef``,
validated or not), and nothing of its own left behind. Real stack: PostgreSQL, SeaweedFS.

The reference is the operator's restore, ``pg_dump -Fc | pg_restore`` of the backed-up
database (nothing writes to it between the backup and the dump). Three restores of one format-2
backup are compared with it: plain with the history tables loaded at the same time (``--jobs
2``), plain one table after another (``--jobs 1``), and ``--tiered`` (phase 2 swapped in).
Each history table comes with the statistics of the columns Prefect's queries plan on."""

from __future__ import annotations

import json

import psycopg
import pytest
from conftest import backup_manifest, clone_prefect_db, run_cli
from test_tiered_restore_integration import _with_password, add_history

from prefect_dr.prefect_schema import PLANNED_COLUMNS
from prefect_dr.runs_split import RUN_TABLES

pytestmark = pytest.mark.integration


def shape(url: str, pw: str) -> dict[str, object]:
    """What a restore must reproduce exactly: schemas, per-table exact row counts, index and
    constraint definitions."""
    with psycopg.connect(url, password=pw) as conn:
        schemas = sorted(r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema'"))
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
            "AND relnamespace = 'public'::regnamespace ORDER BY relname")]
        rows = {t: conn.execute(f'SELECT count(*) FROM public."{t}"').fetchone()[0]
                for t in tables}
        indexes = conn.execute(
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2, 3").fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, contype, convalidated, "
            "pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2").fetchall()
    return {"schemas": schemas, "rows": rows, "indexes": indexes, "constraints": constraints}


def _differences(got: dict[str, object], want: dict[str, object]) -> list[str]:
    out = []
    for key in want:
        if got[key] != want[key]:
            if isinstance(want[key], dict):
                bad = {k: (got[key].get(k), v) for k, v in want[key].items()  # type: ignore
                       if got[key].get(k) != v}  # type: ignore[attr-defined]
                bad.update({k: (v, None) for k, v in got[key].items()  # type: ignore
                            if k not in want[key]})  # type: ignore[operator]
                out.append(f"{key}: {bad}")
            else:
                g, w = set(got[key]), set(want[key])  # type: ignore[call-overload]
                out.append(f"{key}: only in the restore {sorted(g - w)}, only in pg_restore's "
                           f"{sorted(w - g)}")
    return out


def test_every_restore_path_produces_what_a_plain_pg_restore_does(
        clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw, rows=6000)
    manifest = backup_manifest(env)
    assert manifest["format_version"] == 4  # the runs split (flat serving)
    peer = shape(_with_password(clone_prefect_db(env, f"{db}_peer"), pw), pw)
    assert peer["rows"]["events"] >= 6000 and peer["indexes"] and peer["constraints"]
    base = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0]
    for variant, extra in (("jobs2", ["--jobs", "2"]), ("jobs1", ["--jobs", "1"]),
                           ("tiered", ["--tiered"])):
        target = f"{base}/{db}_{variant}"
        done = run_cli(["restore", manifest["backup_id"], "--target-url", target, "--yes",
                        "--json", *extra], env)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        if variant == "tiered":
            assert {b["table"] for b in result["backfilled"]} == {
                "events", "event_resources", "log", *RUN_TABLES}
        got = shape(_with_password(target, pw), pw)
        assert not _differences(got, peer), (variant, _differences(got, peer))
        stats = planned_statistics(_with_password(target, pw), pw)
        assert all(set(cols) <= stats[t] for t, cols in PLANNED_COLUMNS.items()), (variant,
                                                                                   stats)


def planned_statistics(url: str, pw: str) -> dict[str, set[str]]:
    """The columns of each history table that have statistics (pg_stats)."""
    with psycopg.connect(url, password=pw) as conn:
        rows = conn.execute("SELECT tablename, attname FROM pg_stats WHERE schemaname = "
                            "'public' AND tablename = ANY(%s)",
                            (list(PLANNED_COLUMNS),)).fetchall()
    out: dict[str, set[str]] = {t: set() for t in PLANNED_COLUMNS}
    for table, column in rows:
        out[table].add(column)
    return out
