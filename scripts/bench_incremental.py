"""Benchmark: an incremental backup against a full one (issue 26).

    eval "$(scripts/stack env)"
    .venv/bin/python scripts/bench_incremental.py [--history-mb 1024] [--new-percent 4]
        [--runs 3] [--out bench-results/incremental.json]

Clones the stack's seeded Prefect database into ``prefect_bench_inc`` (kept and reused while
its history is large enough), grows its history (events, event_resources, log) with generated
rows to about ``--history-mb`` MiB, makes all of it two hours old, and takes a full backup (the
chain's base). Then ``--runs`` rounds, each: the history written so far made two hours
older (as if the hour between two increments had passed: the 5-minute overlap reaches none of
it), ``--new-percent`` % new history rows written now,
``prefect-dr backup --kind full``, then ``prefect-dr backup --kind incremental`` (its parent is
that full backup: the increment holds the new rows, the overlap included). Reports each round's
wall time and stored size of both, and the same-run ratios (increment / full); medians at the
end. The machine need not be quiet: the ratios compare runs of the same round. The backups go
to a per-run prefix of the stack's repository (``bench-inc-<stamp>``), left there (a test
stack's bucket; ``scripts/stack down`` keeps it, deleting the stack dir removes it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB = "prefect_bench_inc"
HISTORY = ("events", "event_resources", "log")


def _url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + name


def _clone(env: dict[str, str], target: str) -> None:
    """The stack's Prefect database into ``target`` (created), unless it is there."""
    pw = env["PGPASSWORD"]
    with psycopg.connect(_url(env["PREFECT_DR_DATABASE_URL"], "postgres"), password=pw,
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{DB}"')
    dump = subprocess.run(["pg_dump", "-Fc", "--dbname", env["PREFECT_DR_DATABASE_URL"]],
                          env=env, check=True, capture_output=True).stdout
    subprocess.run(["pg_restore", "--no-owner", "--dbname", target], input=dump, env=env,
                   check=True, capture_output=True)


def _history_bytes(conn: psycopg.Connection) -> int:
    return sum(int(conn.execute("SELECT pg_total_relation_size(%s)", (f"public.{t}",))
                   .fetchone()[0]) for t in HISTORY)


def _add(conn: psycopg.Connection, rows: int) -> None:
    """``rows`` events (each with one resource row) and ``rows`` log lines, written now."""
    conn.execute(
        "WITH e AS (INSERT INTO events (occurred, event, resource_id, resource, "
        "related_resource_ids, related, payload, received, recorded, id) SELECT now() - g * "
        "interval '1 s', 'bench.event', 'bench.resource.' || g, jsonb_build_object('id', g), "
        "'[]'::jsonb, '[]'::jsonb, jsonb_build_object('blob', repeat(md5(g::text), 12)), "
        "now(), now(), gen_random_uuid() FROM generate_series(1, %s) g "
        "RETURNING occurred, resource_id, id) "
        "INSERT INTO event_resources (occurred, resource_id, resource_role, resource, event_id) "
        "SELECT occurred, resource_id, 'primary', '{}'::json, id FROM e", (rows,))
    conn.execute(
        "INSERT INTO log (name, level, flow_run_id, message, timestamp) SELECT 'bench', 20, "
        "NULL, 'line ' || g || ' ' || repeat(md5(g::text), 8), now() FROM "
        "generate_series(1, %s) g", (rows,))


def _grow(url: str, pw: str, target_mb: int) -> int:
    """Grow the history to about ``target_mb`` MiB; everything so far made two hours old.
    Returns the history rows (events + event_resources + log)."""
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        while _history_bytes(conn) < target_mb * 1024 * 1024:
            _add(conn, 50_000)
            print(f"bench: history {_history_bytes(conn) // 2**20} MiB", file=sys.stderr)
        for t in HISTORY:
            conn.execute(f"UPDATE {t} SET updated = now() - interval '2 hours' "
                         "WHERE updated > now() - interval '2 hours'")
            conn.execute(f"VACUUM ANALYZE {t}")
        return sum(int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                   for t in HISTORY)


def _age_recent(conn: psycopg.Connection) -> None:
    """Make the rows of the last hours two hours older (through the ``updated`` index)."""
    for t in HISTORY:
        conn.execute(f"UPDATE {t} SET updated = updated - interval '2 hours' "
                     "WHERE updated > now() - interval '3 hours'")


def _backup(env: dict[str, str], kind: str) -> dict[str, Any]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", "--json", "backup", "--kind",
                           kind], env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: backup --kind {kind} failed: {proc.stderr.strip()}")
    bid = json.loads(proc.stdout)["backup_id"]
    shown = json.loads(subprocess.run([sys.executable, "-m", "prefect_dr", "--json", "show",
                                       bid], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    history = sum(a["rows"] for a in shown["artifacts"] if a.get("table"))
    return {"backup_id": bid, "seconds": round(seconds, 2),
            "bytes": sum(a["size"] for a in shown["artifacts"]), "history_rows": history}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history-mb", type=int, default=1024)
    p.add_argument("--new-percent", type=float, default=4.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "incremental.json")
    args = p.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pw = env["PGPASSWORD"]
    url = _url(env["PREFECT_DR_DATABASE_URL"], DB)
    _clone(env, url)
    rows = _grow(url, pw, args.history_mb)
    env.update(PREFECT_DR_DATABASE_URL=url,
               PREFECT_DR_S3_PREFIX=f"bench-inc-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}")
    env.pop("PREFECT_DR_REPOSITORY", None)
    with psycopg.connect(url, password=pw) as conn:
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    _backup(env, "full")  # the first chain's base
    new = max(1, int(rows / 3 * args.new_percent / 100))  # events, resources, log: ~rows/3 each
    rounds = []
    for n in range(args.runs):
        with psycopg.connect(url, password=pw, autocommit=True) as conn:
            _age_recent(conn)  # an hour passes: the last round's rows are out of the overlap
            _add(conn, new)
        full = _backup(env, "full")
        inc = _backup(env, "incremental")
        rounds.append({"full": full, "incremental": inc,
                       "time_ratio": round(inc["seconds"] / full["seconds"], 3),
                       "size_ratio": round(inc["bytes"] / full["bytes"], 4)})
        print(f"bench: round {n + 1}: full {full['seconds']}s {full['bytes']} B, incremental "
              f"{inc['seconds']}s {inc['bytes']} B ({inc['history_rows']} history rows)",
              file=sys.stderr)
    result = {
        "database_size": size, "history_rows": rows, "new_percent": args.new_percent,
        "cpus": os.cpu_count(), "rounds": rounds,
        "median_time_ratio": statistics.median(r["time_ratio"] for r in rounds),
        "median_size_ratio": statistics.median(r["size_ratio"] for r in rounds),
        "median_full_s": statistics.median(r["full"]["seconds"] for r in rounds),
        "median_incremental_s": statistics.median(r["incremental"]["seconds"] for r in rounds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| database | history rows | new | full | incremental | time ratio | size ratio |\n"
          f"|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {size / 2**30:.2f} GiB | {rows:,} | {args.new_percent}% | "
          f"{result['median_full_s']} s | {result['median_incremental_s']} s | "
          f"{result['median_time_ratio']} | {result['median_size_ratio']} |")


if __name__ == "__main__":
    main()
